using System.Reflection;
using System.Runtime.InteropServices;

namespace Palm.Gpu.Sharding.Mpi;

/// <summary>
/// Raw bindings to MPICH (libmpich.so.12, the MPICH ABI: handles are 32-bit integers, constants below are
/// /usr/include/x86_64-linux-gnu/mpich/mpi.h's), only the calls palm uses. Every call returns an error code;
/// communicators are set to MPI_ERRORS_RETURN so <see cref="Check"/> turns a failure into an exception naming the
/// call instead of MPICH aborting the job. Collectives are non-blocking (I…) and completed by polling MPI_Test,
/// so a rank thread never sits inside MPI where the failure watchdog could not see it.
/// The library is resolved at first use only, so a process that never launches under MPI never loads it.
/// </summary>
internal static unsafe partial class MpiNative
{
    public const string Library = "palm-mpi";   // resolved by Resolver: PALM_MPI_LIBRARY or libmpich.so.12

    public const int Success = 0;
    public const int CommWorld = 0x44000000;
    public const int Byte = 0x4c00010d, Int = 0x4c000405, Float = 0x4c00040a, Double = 0x4c00080b;
    public const int ErrorsReturn = 0x54000001;
    public const int RequestNull = 0x2c000000;
    public const int ThreadMultiple = 3;
    public const int MaxProcessorName = 128, MaxErrorString = 512;
    public static readonly nint StatusIgnore = 1;

    [LibraryImport(Library)] public static partial int MPI_Init_thread(int* argc, nint* argv, int required, int* provided);
    [LibraryImport(Library)] public static partial int MPI_Initialized(int* flag);
    [LibraryImport(Library)] public static partial int MPI_Finalize();
    [LibraryImport(Library)] public static partial int MPI_Abort(int comm, int code);
    [LibraryImport(Library)] public static partial int MPI_Comm_rank(int comm, int* rank);
    [LibraryImport(Library)] public static partial int MPI_Comm_size(int comm, int* size);
    [LibraryImport(Library)] public static partial int MPI_Comm_split(int comm, int color, int key, int* newComm);
    [LibraryImport(Library)] public static partial int MPI_Comm_dup(int comm, int* newComm);
    [LibraryImport(Library)] public static partial int MPI_Comm_set_errhandler(int comm, int handler);
    [LibraryImport(Library)] public static partial int MPI_Get_processor_name(byte* name, int* length);
    [LibraryImport(Library)] public static partial int MPI_Error_string(int code, byte* text, int* length);
    [LibraryImport(Library)] public static partial int MPI_Get_library_version(byte* text, int* length);
    [LibraryImport(Library)] public static partial int MPI_Iallgather(void* send, int sendCount, int sendType, void* recv, int recvCount, int recvType, int comm, int* request);
    [LibraryImport(Library)] public static partial int MPI_Isend(void* buf, int count, int type, int dest, int tag, int comm, int* request);
    [LibraryImport(Library)] public static partial int MPI_Irecv(void* buf, int count, int type, int source, int tag, int comm, int* request);
    [LibraryImport(Library)] public static partial int MPI_Test(int* request, int* flag, nint status);
    [LibraryImport(Library)] public static partial int MPI_Request_free(int* request);
    [LibraryImport(Library)] public static partial int MPI_Cancel(int* request);

    public static void Check(int code, string call)
    {
        if (code != Success) throw new MpiException($"{call} failed: {ErrorString(code)}");
    }

    public static string ErrorString(int code)
    {
        var text = stackalloc byte[MaxErrorString];
        int length = 0;
        return MPI_Error_string(code, text, &length) == Success ? System.Text.Encoding.ASCII.GetString(text, length) : $"MPI error {code}";
    }

    static bool _resolverSet;

    /// <summary>
    /// Maps <see cref="Library"/> to the MPI library (PALM_MPI_LIBRARY, else libmpich.so.12) and loads it; null when
    /// loaded, else why it could not be.
    /// </summary>
    public static string? Load()
    {
        string name = Environment.GetEnvironmentVariable("PALM_MPI_LIBRARY") is { Length: > 0 } custom ? custom : "libmpich.so.12";
        if (!NativeLibrary.TryLoad(name, out var handle)) return $"the MPI library '{name}' could not be loaded";
        if (!NativeLibrary.TryGetExport(handle, "MPI_Iallgather", out _)) return $"'{name}' is not an MPI 3 library (it has no MPI_Iallgather)";
        if (!_resolverSet)
        {
            NativeLibrary.SetDllImportResolver(typeof(MpiNative).Assembly, (lib, _, _) => lib == Library ? handle : 0);
            _resolverSet = true;
        }
        return null;
    }
}

/// <summary>An MPI call failed (the message names it) or a peer process was lost.</summary>
public sealed class MpiException(string message) : Exception(message);
