using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Palm.Gpu.Backends.OpenCl;
using Xunit;

namespace Palm.Gpu.Tests.OpenCl;

/// <summary>
/// Several OpenCL devices on one platform, for the shared-context and mesh tests. PoCL decides how many devices
/// it exposes from POCL_DEVICES when the platform is first initialised, so this assembly sets
/// POCL_DEVICES="pthread pthread pthread pthread" in the C runtime's environment as it loads, before any test
/// touches OpenCL, unless the caller has set it (other platforms ignore the variable; child processes such as
/// the CLI tests' keep the environment they were given). PoCL's pthread devices share one worker pool, so the
/// extra devices cost nothing until used. A test that needs more devices than one platform has fails with the
/// reason, like every OpenCL test here: none skips.
/// </summary>
public static partial class OpenClTestDevices
{
    public const int Exposed = 4;

    [ModuleInitializer]
    internal static void ExposeSeveralPoclDevices()
    {
        if (Environment.GetEnvironmentVariable("POCL_DEVICES") is not null) return;
        // .NET's Environment.SetEnvironmentVariable does not reach the C runtime's environment, which PoCL reads; setenv does.
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
            SetEnv("POCL_DEVICES", string.Join(' ', Enumerable.Repeat("pthread", Exposed)), 0);
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    /// <summary>The first <paramref name="count"/> devices of the first platform that has that many.</summary>
    public static OpenClDevice[] OnOnePlatform(int count)
    {
        var platforms = OpenClPlatform.All();
        foreach (var p in platforms)
        {
            var devices = p.Devices();
            if (devices.Count >= count) return devices.Take(count).ToArray();
        }
        Assert.Fail($"this test needs {count} OpenCL devices on one platform; found {string.Join(", ", platforms.Select(p => $"'{p.Name}' with {p.Devices().Count}"))}. " +
                    $"With PoCL, run with POCL_DEVICES unset (the tests then expose {Exposed}) or set it to at least {count} devices, " +
                    $"e.g. POCL_DEVICES=\"{string.Join(' ', Enumerable.Repeat("pthread", count))}\".");
        return [];
    }
}
