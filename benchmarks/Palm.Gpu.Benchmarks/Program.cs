using BenchmarkDotNet.Running;
using Palm.Gpu.Benchmarks;

// Runs the BenchmarkDotNet suites; pass --filter '*Attention*' to run one suite (see KernelBenchmarks.cs).
// runtimeconfig.template.json turns tiered compilation off for this program: a kernel called a handful of
// times would otherwise be timed as unoptimised tier-0 code.
// Our own flags, taken out before BenchmarkDotNet sees the rest:
//   --shapes small,palm-8b-layer   which model shapes the kernel suites use (default both)
//   --backends cpu,opencl          which backends (default every one that can be created here)
// Verbs:
//   gemm-quick [threads] [match]   a fast GFLOP/s table of our GEMM vs OpenBLAS, without BenchmarkDotNet (only the
//                                  shapes whose name contains match, e.g. "fused", when given)
//   gemm-blocking [threads] [match] [kc:rows:nc ...]  our GEMM under several cache blockings, calls alternating, cold caches
//   attention-quick [threads] [rounds]  a fast GFLOP/s table of the CPU attention kernels beside a GEMM peer
//   board [--out DIR] [--machine NAME] [--preset P] [--batch B] [--seq T] [--passes N]
//                                  regenerate the results board DIR/NAME.md (default benchmarks/results/<cpu>-<cores>c.md)
//   list                           print every kernel case
var rest = new List<string>();
string? outDir = null, machine = null, preset = null;
int? batch = null, seq = null;
int passes = 1;
for (int i = 0; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
    switch (args[i])
    {
        case "--shapes":
            var names = Next().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            KernelCases.Shapes = names.Select(n => KernelShape.All.FirstOrDefault(s => s.Name == n)
                ?? throw new ArgumentException($"unknown shape '{n}'; choose from {string.Join(", ", KernelShape.All)}")).ToList();
            break;
        case "--backends":
            var wanted = Next().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var present = KernelCases.AvailableBackends(Console.Error, withSimulators: true);
            KernelCases.Backends = wanted.Where(w => present.Contains(w) || Skip(w)).ToList();
            break;
        case "--out": outDir = Next(); break;
        case "--machine": machine = Next(); break;
        case "--preset": preset = Next(); break;
        case "--batch": batch = int.Parse(Next()); break;
        case "--seq": seq = int.Parse(Next()); break;
        case "--passes": passes = int.Parse(Next()); break;
        default: rest.Add(args[i]); break;
    }
}

static bool Skip(string backend)
{
    Console.Error.WriteLine($"backend {backend}: not available here; skipped");
    return false;
}

if (rest.Count > 0 && rest[0] == "gemm-quick")
{
    GemmBenchmarks.Quick(rest.Count > 1 ? int.Parse(rest[1]) : Environment.ProcessorCount, rest.Count > 2 ? rest[2] : "");
    return;
}
if (rest.Count > 0 && rest[0] == "gemm-blocking")
{
    GemmBlockingQuick.Run(rest.Count > 1 ? int.Parse(rest[1]) : Environment.ProcessorCount, rest.Count > 2 ? rest[2] : "", rest.Skip(3).ToList());
    return;
}
if (rest.Count > 0 && rest[0] == "attention-quick")
{
    AttentionQuick.Run(rest.Count > 1 ? int.Parse(rest[1]) : Environment.ProcessorCount, rest.Count > 2 ? int.Parse(rest[2]) : 5);
    return;
}
if (rest.Count > 0 && rest[0] == "list")
{
    foreach (var c in KernelCases.All())
        Console.WriteLine($"{c.Suite,-14} {c,-52} {c.Pass,-9} {c.Cost.Flops / 1e9,10:F3} GFLOP {c.Cost.Bytes / 1e6,10:F1} MB");
    return;
}
if (rest.Count > 0 && rest[0] == "board")
{
    string path = ResultsBoard.Generate(new ResultsBoard.Options(outDir ?? Path.Combine("benchmarks", "results"), machine, preset ?? "small", batch ?? 4, seq, passes),
                                        Console.Error);
    Console.WriteLine($"wrote {path}");
    return;
}
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run([.. rest]);
