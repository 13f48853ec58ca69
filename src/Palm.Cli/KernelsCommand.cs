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
            var written = KernelEmitter.WriteAll(target, dir);
            Console.WriteLine($"wrote {written.Count} {(target == KernelTarget.Ptx ? "PTX" : "OpenCL C")} kernels to {dir}");
            foreach (var k in written) Console.WriteLine($"  {k.FileName}  ({k.Code.Length:N0} chars)");
            return 0;
        }));
        return cmd;
    }
}
