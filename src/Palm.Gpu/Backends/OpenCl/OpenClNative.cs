using System.Runtime.InteropServices;

namespace Palm.Gpu.Backends.OpenCl;

/// <summary>
/// Raw bindings to the OpenCL ICD loader (libOpenCL.so.1), only the entry points the backend uses.
/// Handles are opaque pointers (nint). Every call returns or writes a status code; callers pass it to
/// <see cref="OpenClException.Check"/> so a failure names the call and the status.
/// Constants and signatures follow /usr/include/CL/cl.h (OpenCL 1.2 subset, present in every ICD).
/// </summary>
internal static unsafe partial class OpenClNative
{
    public const string Library = "libOpenCL.so.1";

    // ---- constants ----------------------------------------------------------------------------
    public const int Success = 0;
    public const int PlatformNotFoundKhr = -1001;

    public const uint PlatformVersion = 0x0901, PlatformName = 0x0902, PlatformVendor = 0x0903;

    public const ulong DeviceTypeCpu = 1 << 1, DeviceTypeGpu = 1 << 2, DeviceTypeAccelerator = 1 << 3, DeviceTypeAll = 0xFFFFFFFF;

    public const uint DeviceType = 0x1000, DeviceMaxComputeUnits = 0x1002, DeviceMaxWorkGroupSize = 0x1004,
        DeviceMaxClockFrequency = 0x100C, DeviceMaxMemAllocSize = 0x1010, DeviceSingleFpConfig = 0x101B,
        DeviceGlobalMemSize = 0x101F, DeviceLocalMemSize = 0x1023, DeviceName = 0x102B, DeviceVendor = 0x102C,
        DeviceVersion = 0x102F, DeviceExtensions = 0x1030, DeviceDoubleFpConfig = 0x1032, DeviceOpenClCVersion = 0x103D;

    public const ulong FpCorrectlyRoundedDivideSqrt = 1 << 7;

    public const ulong QueueProfilingEnable = 1 << 1;
    public const ulong MemReadWrite = 1 << 0;
    public const uint BufferCreateTypeRegion = 0x1220;
    public const uint DeviceMemBaseAddrAlign = 0x1019;

    public const uint ProgramBuildStatus = 0x1181, ProgramBuildLog = 0x1183;
    public const uint KernelWorkGroupSize = 0x11B0;
    public const uint ProfilingCommandStart = 0x1282, ProfilingCommandEnd = 0x1283;
    public const uint True = 1, False = 0;

    // ---- platforms and devices ----------------------------------------------------------------
    [LibraryImport(Library)] public static partial int clGetPlatformIDs(uint numEntries, nint* platforms, uint* numPlatforms);
    [LibraryImport(Library)] public static partial int clGetPlatformInfo(nint platform, uint param, nuint size, void* value, nuint* sizeRet);
    [LibraryImport(Library)] public static partial int clGetDeviceIDs(nint platform, ulong deviceType, uint numEntries, nint* devices, uint* numDevices);
    [LibraryImport(Library)] public static partial int clGetDeviceInfo(nint device, uint param, nuint size, void* value, nuint* sizeRet);

    // ---- contexts and queues ------------------------------------------------------------------
    [LibraryImport(Library)] public static partial nint clCreateContext(nint* properties, uint numDevices, nint* devices, nint notify, nint userData, int* status);
    [LibraryImport(Library)] public static partial int clRetainContext(nint context);
    [LibraryImport(Library)] public static partial int clReleaseContext(nint context);
    [LibraryImport(Library)] public static partial nint clCreateCommandQueue(nint context, nint device, ulong properties, int* status);
    [LibraryImport(Library)] public static partial int clReleaseCommandQueue(nint queue);
    [LibraryImport(Library)] public static partial int clFlush(nint queue);
    [LibraryImport(Library)] public static partial int clFinish(nint queue);

    // ---- buffers ------------------------------------------------------------------------------
    [LibraryImport(Library)] public static partial nint clCreateBuffer(nint context, ulong flags, nuint size, void* hostPtr, int* status);
    [LibraryImport(Library)] public static partial int clReleaseMemObject(nint memory);
    [LibraryImport(Library)] public static partial nint clCreateSubBuffer(nint buffer, ulong flags, uint createType, void* info, int* status);
    [LibraryImport(Library)] public static partial int clEnqueueReadBuffer(nint queue, nint buffer, uint blocking, nuint offset, nuint size, void* ptr,
                                                                           uint numEvents, nint* waitList, nint* evt);
    [LibraryImport(Library)] public static partial int clEnqueueWriteBuffer(nint queue, nint buffer, uint blocking, nuint offset, nuint size, void* ptr,
                                                                            uint numEvents, nint* waitList, nint* evt);
    [LibraryImport(Library)] public static partial int clEnqueueCopyBuffer(nint queue, nint src, nint dst, nuint srcOffset, nuint dstOffset, nuint size,
                                                                           uint numEvents, nint* waitList, nint* evt);
    [LibraryImport(Library)] public static partial int clEnqueueFillBuffer(nint queue, nint buffer, void* pattern, nuint patternSize, nuint offset, nuint size,
                                                                           uint numEvents, nint* waitList, nint* evt);

    // ---- programs and kernels -----------------------------------------------------------------
    [LibraryImport(Library)] public static partial nint clCreateProgramWithSource(nint context, uint count, byte** strings, nuint* lengths, int* status);
    [LibraryImport(Library)] public static partial int clBuildProgram(nint program, uint numDevices, nint* devices, byte* options, nint notify, nint userData);
    [LibraryImport(Library)] public static partial int clGetProgramBuildInfo(nint program, nint device, uint param, nuint size, void* value, nuint* sizeRet);
    [LibraryImport(Library)] public static partial int clReleaseProgram(nint program);
    [LibraryImport(Library)] public static partial nint clCreateKernel(nint program, byte* name, int* status);
    [LibraryImport(Library)] public static partial int clReleaseKernel(nint kernel);
    [LibraryImport(Library)] public static partial int clSetKernelArg(nint kernel, uint index, nuint size, void* value);
    [LibraryImport(Library)] public static partial int clGetKernelWorkGroupInfo(nint kernel, nint device, uint param, nuint size, void* value, nuint* sizeRet);
    [LibraryImport(Library)] public static partial int clEnqueueNDRangeKernel(nint queue, nint kernel, uint workDim, nuint* globalOffset, nuint* globalSize,
                                                                              nuint* localSize, uint numEvents, nint* waitList, nint* evt);

    // ---- events -------------------------------------------------------------------------------
    [LibraryImport(Library)] public static partial int clWaitForEvents(uint numEvents, nint* events);
    [LibraryImport(Library)] public static partial int clGetEventProfilingInfo(nint evt, uint param, nuint size, void* value, nuint* sizeRet);
    [LibraryImport(Library)] public static partial int clReleaseEvent(nint evt);
    // OpenCL 1.2: a marker completes when every earlier command of its queue (or its wait list) has; a barrier
    // holds every later command of its queue until its wait list completes. Events may come from any queue of
    // the same context, which is how the device-side collectives order work across devices.
    [LibraryImport(Library)] public static partial int clEnqueueMarkerWithWaitList(nint queue, uint numEvents, nint* waitList, nint* evt);
    [LibraryImport(Library)] public static partial int clEnqueueBarrierWithWaitList(nint queue, uint numEvents, nint* waitList, nint* evt);

    /// <summary>Symbolic name of an OpenCL status code, e.g. -5 → "CL_OUT_OF_RESOURCES".</summary>
    public static string StatusName(int status) => StatusNames.TryGetValue(status, out var name) ? name : $"CL status {status}";

    static readonly Dictionary<int, string> StatusNames = new()
    {
        [0] = "CL_SUCCESS",
        [-1] = "CL_DEVICE_NOT_FOUND", [-2] = "CL_DEVICE_NOT_AVAILABLE", [-3] = "CL_COMPILER_NOT_AVAILABLE",
        [-4] = "CL_MEM_OBJECT_ALLOCATION_FAILURE", [-5] = "CL_OUT_OF_RESOURCES", [-6] = "CL_OUT_OF_HOST_MEMORY",
        [-7] = "CL_PROFILING_INFO_NOT_AVAILABLE", [-8] = "CL_MEM_COPY_OVERLAP", [-9] = "CL_IMAGE_FORMAT_MISMATCH",
        [-10] = "CL_IMAGE_FORMAT_NOT_SUPPORTED", [-11] = "CL_BUILD_PROGRAM_FAILURE", [-12] = "CL_MAP_FAILURE",
        [-13] = "CL_MISALIGNED_SUB_BUFFER_OFFSET", [-14] = "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST",
        [-15] = "CL_COMPILE_PROGRAM_FAILURE", [-16] = "CL_LINKER_NOT_AVAILABLE", [-17] = "CL_LINK_PROGRAM_FAILURE",
        [-18] = "CL_DEVICE_PARTITION_FAILED", [-19] = "CL_KERNEL_ARG_INFO_NOT_AVAILABLE",
        [-30] = "CL_INVALID_VALUE", [-31] = "CL_INVALID_DEVICE_TYPE", [-32] = "CL_INVALID_PLATFORM", [-33] = "CL_INVALID_DEVICE",
        [-34] = "CL_INVALID_CONTEXT", [-35] = "CL_INVALID_QUEUE_PROPERTIES", [-36] = "CL_INVALID_COMMAND_QUEUE",
        [-37] = "CL_INVALID_HOST_PTR", [-38] = "CL_INVALID_MEM_OBJECT", [-39] = "CL_INVALID_IMAGE_FORMAT_DESCRIPTOR",
        [-40] = "CL_INVALID_IMAGE_SIZE", [-41] = "CL_INVALID_SAMPLER", [-42] = "CL_INVALID_BINARY",
        [-43] = "CL_INVALID_BUILD_OPTIONS", [-44] = "CL_INVALID_PROGRAM", [-45] = "CL_INVALID_PROGRAM_EXECUTABLE",
        [-46] = "CL_INVALID_KERNEL_NAME", [-47] = "CL_INVALID_KERNEL_DEFINITION", [-48] = "CL_INVALID_KERNEL",
        [-49] = "CL_INVALID_ARG_INDEX", [-50] = "CL_INVALID_ARG_VALUE", [-51] = "CL_INVALID_ARG_SIZE",
        [-52] = "CL_INVALID_KERNEL_ARGS", [-53] = "CL_INVALID_WORK_DIMENSION", [-54] = "CL_INVALID_WORK_GROUP_SIZE",
        [-55] = "CL_INVALID_WORK_ITEM_SIZE", [-56] = "CL_INVALID_GLOBAL_OFFSET", [-57] = "CL_INVALID_EVENT_WAIT_LIST",
        [-58] = "CL_INVALID_EVENT", [-59] = "CL_INVALID_OPERATION", [-60] = "CL_INVALID_GL_OBJECT",
        [-61] = "CL_INVALID_BUFFER_SIZE", [-62] = "CL_INVALID_MIP_LEVEL", [-63] = "CL_INVALID_GLOBAL_WORK_SIZE",
        [-64] = "CL_INVALID_PROPERTY", [-65] = "CL_INVALID_IMAGE_DESCRIPTOR", [-66] = "CL_INVALID_COMPILER_OPTIONS",
        [-67] = "CL_INVALID_LINKER_OPTIONS", [-68] = "CL_INVALID_DEVICE_PARTITION_COUNT", [-69] = "CL_INVALID_PIPE_SIZE",
        [-70] = "CL_INVALID_DEVICE_QUEUE", [-71] = "CL_INVALID_SPEC_ID", [-72] = "CL_MAX_SIZE_RESTRICTION_EXCEEDED",
        [-1001] = "CL_PLATFORM_NOT_FOUND_KHR",
    };
}
