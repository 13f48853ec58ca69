using BenchmarkDotNet.Running;

// Runs the BenchmarkDotNet suites; pass --filter '*Gemm*' to run one suite.
// `gemm-quick [threads] [name filter]` prints a fast GFLOP/s table of the GEMM shapes without BenchmarkDotNet.
if (args.Length > 0 && args[0] == "gemm-quick")
{
    Palm.Gpu.Benchmarks.GemmBenchmarks.Quick(args.Length > 1 ? int.Parse(args[1]) : Environment.ProcessorCount, args.Length > 2 ? args[2] : null);
    return;
}
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
