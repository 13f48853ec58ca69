using BenchmarkDotNet.Running;

// Runs the BenchmarkDotNet suites; pass --filter '*Gemm*' to run one suite.
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
