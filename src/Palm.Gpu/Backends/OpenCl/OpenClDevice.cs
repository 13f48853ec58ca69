using System.Text;
using static Palm.Gpu.Backends.OpenCl.OpenClNative;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>An installed OpenCL platform (one vendor driver, e.g. PoCL or NVIDIA) and its devices.</summary>
public sealed class OpenClPlatform
{
    internal OpenClPlatform(nint handle)
    {
        Handle = handle;
        Name = PlatformString(handle, PlatformName);
        Vendor = PlatformString(handle, PlatformVendor);
        Version = PlatformString(handle, PlatformVersion);
        ApiVersion = ParseVersion(Version);
    }

    internal nint Handle { get; }
    public string Name { get; }
    public string Vendor { get; }
    public string Version { get; }
    /// <summary>The OpenCL version the platform implements, from <see cref="Version"/> ("OpenCL 3.0 PoCL …" → 3.0); 0.0 if unreadable.</summary>
    public System.Version ApiVersion { get; }

    /// <summary>"OpenCL &lt;major&gt;.&lt;minor&gt; &lt;vendor-specific&gt;", as the specification fixes the platform version string.</summary>
    internal static System.Version ParseVersion(string version)
    {
        var m = System.Text.RegularExpressions.Regex.Match(version, @"^OpenCL (\d+)\.(\d+)");
        return m.Success ? new System.Version(int.Parse(m.Groups[1].Value), int.Parse(m.Groups[2].Value)) : new System.Version(0, 0);
    }

    /// <summary>Every platform the ICD loader knows. Throws <see cref="OpenClUnavailableException"/> when there is none.</summary>
    public static unsafe IReadOnlyList<OpenClPlatform> All()
    {
        OpenClRuntime.EnsureLoaded();
        uint count = 0;
        int status;
        try { status = clGetPlatformIDs(0, null, &count); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            throw new OpenClUnavailableException($"the OpenCL loader library {Library} could not be used ({e.Message})", e);
        }
        if (status == PlatformNotFoundKhr || (status == Success && count == 0))
            throw new OpenClUnavailableException($"the OpenCL loader ({Library}) found no platform (no ICD is installed under /etc/OpenCL/vendors)");
        OpenClException.Check(status, "clGetPlatformIDs");
        var handles = new nint[count];
        fixed (nint* p = handles) OpenClException.Check(clGetPlatformIDs(count, p, null), "clGetPlatformIDs");
        return handles.Select(h => new OpenClPlatform(h)).ToArray();
    }

    /// <summary>The devices of this platform, in the driver's order.</summary>
    public unsafe IReadOnlyList<OpenClDevice> Devices()
    {
        uint count = 0;
        int status = clGetDeviceIDs(Handle, DeviceTypeAll, 0, null, &count);
        if (status == -1 /* CL_DEVICE_NOT_FOUND */) return [];
        OpenClException.Check(status, "clGetDeviceIDs", $"platform '{Name}'");
        var handles = new nint[count];
        fixed (nint* p = handles) OpenClException.Check(clGetDeviceIDs(Handle, DeviceTypeAll, count, p, null), "clGetDeviceIDs", $"platform '{Name}'");
        return handles.Select(h => new OpenClDevice(this, h)).ToArray();
    }

    static unsafe string PlatformString(nint platform, uint param)
    {
        nuint size = 0;
        OpenClException.Check(clGetPlatformInfo(platform, param, 0, null, &size), "clGetPlatformInfo");
        var bytes = new byte[(int)size];
        fixed (byte* p = bytes) OpenClException.Check(clGetPlatformInfo(platform, param, size, p, null), "clGetPlatformInfo");
        return Encoding.UTF8.GetString(bytes).TrimEnd('\0').Trim();
    }
}

/// <summary>One OpenCL device and the properties the backend needs to pick kernels and report itself.</summary>
public sealed class OpenClDevice
{
    internal OpenClDevice(OpenClPlatform platform, nint handle)
    {
        Platform = platform;
        Handle = handle;
        Name = String(DeviceName);
        Vendor = String(DeviceVendor);
        Version = String(DeviceVersion);
        OpenClCVersion = String(DeviceOpenClCVersion);
        Extensions = String(DeviceExtensions);
        Type = Scalar<ulong>(DeviceType);
        ComputeUnits = (int)Scalar<uint>(DeviceMaxComputeUnits);
        ClockMHz = (int)Scalar<uint>(DeviceMaxClockFrequency);
        GlobalMemoryBytes = (long)Scalar<ulong>(DeviceGlobalMemSize);
        MaxAllocationBytes = (long)Scalar<ulong>(DeviceMaxMemAllocSize);
        LocalMemoryBytes = (long)Scalar<ulong>(DeviceLocalMemSize);
        MaxWorkGroupSize = (long)Scalar<nuint>(DeviceMaxWorkGroupSize);
        BaseAddressAlignBits = Scalar<uint>(DeviceMemBaseAddrAlign);
        CorrectlyRoundedDivideSqrt = (Scalar<ulong>(DeviceSingleFpConfig) & FpCorrectlyRoundedDivideSqrt) != 0;
        HasFp64 = Extensions.Contains("cl_khr_fp64") || Scalar<ulong>(DeviceDoubleFpConfig) != 0;
    }

    internal nint Handle { get; }
    public OpenClPlatform Platform { get; }
    public string Name { get; }
    public string Vendor { get; }
    /// <summary>Device OpenCL version string, e.g. "OpenCL 3.0 PoCL ...".</summary>
    public string Version { get; }
    /// <summary>Highest OpenCL C language version the compiler accepts, e.g. "OpenCL C 1.2 PoCL".</summary>
    public string OpenClCVersion { get; }
    public string Extensions { get; }
    internal ulong Type { get; }
    public bool IsCpu => (Type & DeviceTypeCpu) != 0;
    public bool IsGpu => (Type & DeviceTypeGpu) != 0;
    public int ComputeUnits { get; }
    public int ClockMHz { get; }
    public long GlobalMemoryBytes { get; }
    public long MaxAllocationBytes { get; }
    public long LocalMemoryBytes { get; }
    public long MaxWorkGroupSize { get; }
    /// <summary>CL_DEVICE_MEM_BASE_ADDR_ALIGN: a sub-buffer's origin must be a multiple of this many bits.</summary>
    public uint BaseAddressAlignBits { get; }
    /// <summary>The sub-buffer origin alignment in 4-byte elements (at least 1).</summary>
    public long BaseAddressAlignElements => Math.Max(1, BaseAddressAlignBits / 32);
    public bool HasFp64 { get; }
    /// <summary>The device can round fp32 divide and sqrt correctly (-cl-fp32-correctly-rounded-divide-sqrt).</summary>
    public bool CorrectlyRoundedDivideSqrt { get; }

    public string TypeName => IsGpu ? "GPU" : IsCpu ? "CPU" : (Type & DeviceTypeAccelerator) != 0 ? "accelerator" : "device";

    public override string ToString() =>
        $"{Name} ({TypeName}, {Platform.Name}, {ComputeUnits} compute units, {GlobalMemoryBytes / (1024.0 * 1024 * 1024):0.#} GiB, {OpenClCVersion})";

    /// <summary>Every device of every platform, flattened in platform order: the index used by --device.</summary>
    public static IReadOnlyList<OpenClDevice> All() => OpenClPlatform.All().SelectMany(p => p.Devices()).ToArray();

    unsafe string String(uint param)
    {
        nuint size = 0;
        OpenClException.Check(clGetDeviceInfo(Handle, param, 0, null, &size), "clGetDeviceInfo", $"param 0x{param:X}");
        var bytes = new byte[(int)size];
        fixed (byte* p = bytes) OpenClException.Check(clGetDeviceInfo(Handle, param, size, p, null), "clGetDeviceInfo", $"param 0x{param:X}");
        return Encoding.UTF8.GetString(bytes).TrimEnd('\0').Trim();
    }

    unsafe T Scalar<T>(uint param) where T : unmanaged
    {
        T value = default;
        int status = clGetDeviceInfo(Handle, param, (nuint)sizeof(T), &value, null);
        // CL_DEVICE_DOUBLE_FP_CONFIG is optional before OpenCL 1.2; a device without it simply has no fp64.
        if (status == -30 /* CL_INVALID_VALUE */ && param == DeviceDoubleFpConfig) return default;
        OpenClException.Check(status, "clGetDeviceInfo", $"param 0x{param:X}");
        return value;
    }
}
