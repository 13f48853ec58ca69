using System.CommandLine;
using Palm.Gpu.Backends;

namespace Palm.Cli;

/// <summary>`palm devices`: every backend and device this machine offers.</summary>
internal static class DevicesCommand
{
    public static Command Create()
    {
        var cmd = new Command("devices", "list backends and devices");
        cmd.SetAction(_ => Cli.Run(() =>
        {
            foreach (var line in BackendRegistry.ListDevices()) Console.WriteLine(line);
            return 0;
        }));
        return cmd;
    }
}
