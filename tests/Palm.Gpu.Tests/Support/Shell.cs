using System.Diagnostics;

namespace Palm.Gpu.Tests.Support;

/// <summary>Runs a shell command (mounting a small tmpfs for the disk-full tests) and returns its exit status.</summary>
public static class Shell
{
    public static int Run(string command)
    {
        using var p = Process.Start(new ProcessStartInfo("sh", ["-c", command]) { RedirectStandardError = true })!;
        p.WaitForExit();
        return p.ExitCode;
    }
}
