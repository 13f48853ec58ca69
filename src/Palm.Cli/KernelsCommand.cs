using System.CommandLine;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Model;

namespace Palm.Cli;

/// <summary>`palm kernels --emit ptx|opencl --out DIR`: the code ILGPU generates for every kernel, one file each, compiled offline.</summary>
internal static class KernelsCommand
{
    public static Command Create()
    {
        var emit = new Option<string>("--emit") { Description = "ptx (NVIDIA PTX assembly, sm_80) or opencl (OpenCL C)", Required = true };
        var output = new Option<string>("--out") { Description = "directory for the files (created if missing)", Required = true };
        var cmd = new Command("kernels", "write the generated PTX or OpenCL C of every ILGPU kernel, one file per kernel") { emit, output };
        cmd.SetAction(r => Cli.Run(() =>
        {
            KernelTarget target;
            try { target = KernelEmitter.ParseTarget(r.GetValue(emit)!); }
            catch (ArgumentException e) { throw new ConfigException(e.Message); }
            string dir = Path.GetFullPath(r.GetValue(output)!);
            var kernels = KernelEmitter.WriteAll(target, dir);
            var failed = kernels.Where(k => k.Error is not null).ToList();
            Console.WriteLine($"wrote {kernels.Count - failed.Count} {(target == KernelTarget.Ptx ? "PTX" : "OpenCL C")} kernels to {dir}");
            foreach (var k in kernels.Where(k => k.Error is null)) Console.WriteLine($"  {k.FileName}  ({k.Code.Length:N0} chars)");
            if (failed.Count == 0) return 0;
            // A kernel ILGPU cannot compile is a defect of that kernel, not of the user's input: exit 1 with each reason.
            Console.Error.WriteLine($"palm: internal error: ILGPU could not compile {failed.Count} kernel(s); this is a bug in palm, please report it:");
            foreach (var k in failed) Console.Error.WriteLine($"  {k.Name}: {k.Error}");
            return 1;
        }));
        return cmd;
    }
}
