using System.Text.RegularExpressions;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Ilgpu;

// The code ILGPU generates for every kernel, compiled offline (KernelEmitter, as `palm kernels --emit` does), checked
// for what a GPU driver needs and what the kernels promise: PTX with an entry point, nothing left unresolved, an
// explicit fma.rn.f32 in every kernel that calls KernelMath.Fma, mma.sync in the tensor-core GEMM, mul.rn (never a
// contractible multiply) in Adafactor; OpenCL C with a kernel, no call to a function it does not declare, fma where
// the kernel multiplies-adds, and no generic address space (PoCL and Mesa refuse it).
public class EmittedKernelTests
{
    static readonly Lazy<IReadOnlyList<EmittedKernel>> Ptx = new(() => KernelEmitter.Emit(KernelTarget.Ptx));
    static readonly Lazy<IReadOnlyList<EmittedKernel>> OpenCl = new(() => KernelEmitter.Emit(KernelTarget.OpenCl));

    public static TheoryData<string> Names => new(KernelEmitter.Kernels().Select(KernelEmitter.NameOf));

    static EmittedKernel Get(Lazy<IReadOnlyList<EmittedKernel>> all, string name)
    {
        var k = Assert.Single(all.Value, e => e.Name == name);
        Assert.True(k.Error is null, $"{name} does not compile: {k.Error}");
        return k;
    }

    [Fact]
    public void Every_kernel_family_is_found()
    {
        var names = KernelEmitter.Kernels().Select(KernelEmitter.NameOf).ToHashSet();
        foreach (var n in new[] { "Attention.Forward", "Attention.BackwardQuery", "Attention.BackwardKeyValue", "Attention.Decode", "CrossEntropy.Forward",
                                  "CrossEntropy.Backward", "Adafactor.Pass1", "Adafactor.SegmentPass2", "MatmulTensorCore.Matmul", "Matmul.Matmul" })
            Assert.Contains(n, names);
        // Helpers are not kernels.
        Assert.DoesNotContain("KernelMath.Exp", names);
        Assert.DoesNotContain(names, n => n.StartsWith("KernelMath.", StringComparison.Ordinal));
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void Ptx_has_an_entry_point_and_nothing_unresolved(string name)
    {
        var k = Get(Ptx, name);
        Assert.Matches(@"\.visible \.entry Kernel_\w+\(", k.Code);
        Assert.DoesNotContain(".extern .func", k.Code);
        Assert.Contains(".target sm_", k.Code);
        Assert.StartsWith($"// {name}: PTX for", k.Code);
        if (KernelEmitter.CallsFma(k.Method)) Assert.Contains("fma.rn.f32", k.Code);
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void OpenCl_has_a_kernel_declares_what_it_calls_and_no_generic_address_space(string name)
    {
        var k = Get(OpenCl, name);
        string code = string.Join('\n', k.Code.Split('\n').Where(l => !l.TrimStart().StartsWith("//", StringComparison.Ordinal)));
        Assert.Matches(@"\bkernel void Kernel_\w+\(", code);
        Assert.DoesNotContain("__generic", code);
        Assert.DoesNotMatch(@"\bgeneric\s+\w", code);
        var undeclared = UndeclaredCalls(code);
        Assert.True(undeclared.Count == 0, $"{name} calls functions its OpenCL C neither declares nor gets from OpenCL: {string.Join(", ", undeclared)}");
        if (KernelEmitter.CallsFma(k.Method)) Assert.Matches(@"\bfma\s*\(", k.Code);
    }

    [Fact]
    public void Tensor_core_gemm_issues_mma_sync_and_rounds_to_tf32()
    {
        var k = Get(Ptx, "MatmulTensorCore.Matmul");
        Assert.Contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", k.Code);
        Assert.Contains("cvt.rna.tf32.f32", k.Code);
        // The fallback (no inline PTX) is what OpenCL gets: no mma there.
        Assert.DoesNotContain("mma", Get(OpenCl, "MatmulTensorCore.Matmul").Code);
    }

    // Adafactor promises the CPU's bits: every product that feeds a sum is mul.rn, so ptxas cannot contract it into an fma.
    [Fact]
    public void Adafactor_multiplies_with_mul_rn_and_never_fuses()
    {
        foreach (var name in new[] { "Adafactor.Pass1", "Adafactor.Pass2", "Adafactor.SegmentPass1", "Adafactor.SegmentPass2", "Adafactor.RowMoments", "Adafactor.ColMoments" })
        {
            var code = Get(Ptx, name).Code;
            Assert.Contains("mul.rn.f32", code);
            Assert.DoesNotContain("fma.", code);
            // No plain mul.f32 whose result an add or sub reads: ptxas would be free to contract that pair into an fma.
            foreach (Match mul in Regex.Matches(code, @"\tmul\.f32\s+(%f\d+),"))
                Assert.DoesNotMatch($@"\t(add|sub)\.f32\s+%f\d+,[^\n]*{Regex.Escape(mul.Groups[1].Value)}\b", code);
        }
        Assert.Contains("mul.rn.f64", Get(Ptx, "Adafactor.Pass1").Code);
    }

    // The check itself: it finds a call to a function the source never declares (as MathF.FusedMultiplyAdd left unmapped does).
    [Fact]
    public void Undeclared_call_check_finds_a_missing_function()
    {
        const string source = "float helper_1(float a) { return a; }\nkernel void Kernel_X(global float* x) { x[0] = helper_1(x[1]) + fma(x[0], x[1], x[2]); x[1] = FusedMultiplyAdd (x[0], x[1], x[2]); }";
        Assert.Equal(["FusedMultiplyAdd"], UndeclaredCalls(source));
        Assert.Empty(UndeclaredCalls(source.Replace("FusedMultiplyAdd", "fma")));
    }

    // OpenCL C built-ins and keywords the generated code may call.
    static readonly HashSet<string> Builtins =
    [
        "if", "for", "while", "switch", "return", "sizeof", "do",
        "get_global_id", "get_local_id", "get_group_id", "get_global_size", "get_local_size", "get_num_groups", "get_global_offset",
        "barrier", "work_group_barrier", "mem_fence", "fma", "mad", "exp", "log", "sqrt", "rsqrt", "fabs", "fmax", "fmin", "floor", "ceil", "pow",
        "isnan", "isinf", "as_int", "as_uint", "as_float", "as_long", "as_ulong", "as_double", "convert_int", "convert_float", "min", "max",
        "clamp", "select", "native_exp", "native_log", "native_sqrt", "native_rsqrt", "exp2", "log2", "trunc", "round", "copysign",
    ];

    /// <summary>Identifiers called as functions in <paramref name="source"/> that it does not define and OpenCL does not provide.</summary>
    static List<string> UndeclaredCalls(string source)
    {
        var defined = Regex.Matches(source, @"^[ \t]*(?:static\s+|inline\s+)*[A-Za-z_][\w \t\*]*?\b([A-Za-z_]\w*)\s*\([^;{]*\)\s*(?:\{|;|$)", RegexOptions.Multiline)
            .Select(m => m.Groups[1].Value).ToHashSet();
        return Regex.Matches(source, @"\b([A-Za-z_]\w*)\s*\(")
            .Select(m => m.Groups[1].Value)
            .Where(n => !Builtins.Contains(n) && !defined.Contains(n) && !IsTypeName(source, n))
            .Distinct().OrderBy(n => n, StringComparer.Ordinal).ToList();
    }

    /// <summary>Casts look like calls: "(float) (x)"; a scalar type or a typedef'd name is not a function.</summary>
    static bool IsTypeName(string source, string n) =>
        n is "float" or "double" or "int" or "uint" or "long" or "ulong" or "short" or "ushort" or "char" or "uchar" or "bool" or "half" or "void"
        || Regex.IsMatch(source, $@"\btypedef\b[^;]*\b{Regex.Escape(n)}\s*;");

    // ---- the command -----------------------------------------------------------------------------

    [Fact]
    public void Palm_kernels_emit_ptx_writes_one_file_per_kernel()
    {
        string dir = Path.Combine(CliRunner.TempDir(), "ptx");
        var r = CliRunner.Run("kernels", "--emit", "ptx", "--out", dir);
        var files = Directory.Exists(dir) ? Directory.GetFiles(dir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray() : [];
        var expected = KernelEmitter.Kernels().Select(k => KernelEmitter.NameOf(k) + ".ptx").Order(StringComparer.Ordinal).ToArray();
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);
        Assert.Equal(expected, files);
        Assert.Contains($"wrote {expected.Length} PTX kernels", r.Stdout);
        Assert.Contains(".entry", File.ReadAllText(Path.Combine(dir, "Attention.Forward.ptx")));
        Assert.Contains("IlgpuKernelTuning.Gpu", File.ReadAllText(Path.Combine(dir, "Attention.Forward.ptx")));
    }

    [Fact]
    public void Palm_kernels_refuses_a_bad_target_and_an_unwritable_directory()
    {
        var bad = CliRunner.Run("kernels", "--emit", "sass", "--out", CliRunner.TempDir());
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("palm: error: --emit 'sass' is not a kernel target; use ptx", bad.Stderr);
        Assert.Single(bad.Stderr.Trim().Split('\n'));

        string file = Path.Combine(CliRunner.TempDir(), "a-file");
        File.WriteAllText(file, "x");
        var blocked = CliRunner.Run("kernels", "--emit", "opencl", "--out", Path.Combine(file, "sub"));
        Assert.Equal(2, blocked.ExitCode);
        Assert.Contains("palm: error: cannot write kernels into", blocked.Stderr);
        Assert.Single(blocked.Stderr.Trim().Split('\n'));
    }
}
