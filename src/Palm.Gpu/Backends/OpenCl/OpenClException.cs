using System.Runtime.InteropServices;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>An OpenCL call returned an error status. The message names the call and the status.</summary>
public class OpenClException : Exception
{
    public OpenClException(string call, int status, string? detail = null)
        : base($"{call} failed with {OpenClNative.StatusName(status)} ({status}){(detail is null ? "" : ": " + detail)}")
    {
        Call = call;
        Status = status;
    }

    protected OpenClException(string message, string call, int status) : base(message)
    {
        Call = call;
        Status = status;
    }

    /// <summary>The OpenCL entry point that failed, e.g. "clEnqueueNDRangeKernel(matmul)".</summary>
    public string Call { get; }
    /// <summary>The raw status code (negative).</summary>
    public int Status { get; }
    public string StatusName => OpenClNative.StatusName(Status);

    /// <summary>Throws when <paramref name="status"/> is not CL_SUCCESS.</summary>
    public static void Check(int status, string call, string? detail = null)
    {
        if (status != OpenClNative.Success) throw new OpenClException(call, status, detail);
    }
}

/// <summary>A program failed to compile; <see cref="BuildLog"/> holds the compiler's full output.</summary>
public sealed class OpenClBuildException : OpenClException
{
    public OpenClBuildException(string sourceName, string options, string device, int status, string buildLog)
        : base($"building OpenCL program '{sourceName}' for {device} with options \"{options}\" failed with " +
               $"{OpenClNative.StatusName(status)} ({status}). Compiler log:\n{buildLog}", "clBuildProgram", status)
    {
        SourceName = sourceName;
        Options = options;
        BuildLog = buildLog;
    }

    public string SourceName { get; }
    public string Options { get; }
    public string BuildLog { get; }
}

/// <summary>
/// No usable OpenCL runtime: the loader library is missing or no platform is installed. A NotSupportedException:
/// this machine does not support the backend until something is installed (the message says what).
/// </summary>
public sealed class OpenClUnavailableException : NotSupportedException
{
    public const string InstallHint =
        "Install an OpenCL runtime: on Debian/Ubuntu `apt-get install pocl-opencl-icd ocl-icd-libopencl1` " +
        "(runs the kernels on the CPU through PoCL), or the GPU vendor's driver (NVIDIA, AMD ROCm, Intel compute-runtime) " +
        "which provides an OpenCL ICD. `clinfo` should then list at least one platform.";

    public OpenClUnavailableException(string problem, Exception? inner = null) : base($"OpenCL is not available: {problem}. {InstallHint}", inner) { }
}

/// <summary>Loads the OpenCL ICD loader once and reports a missing library as <see cref="OpenClUnavailableException"/>.</summary>
internal static class OpenClRuntime
{
    static readonly Lazy<string?> LoadProblem = new(() =>
    {
        if (NativeLibrary.TryLoad(OpenClNative.Library, typeof(OpenClRuntime).Assembly, null, out _)) return null;
        return $"the OpenCL loader library {OpenClNative.Library} could not be loaded";
    });

    public static void EnsureLoaded()
    {
        if (LoadProblem.Value is { } problem) throw new OpenClUnavailableException(problem);
    }
}
