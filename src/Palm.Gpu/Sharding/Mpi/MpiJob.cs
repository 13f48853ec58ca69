using System.Diagnostics;
using System.Runtime.InteropServices;
using Palm.Gpu.Model;

namespace Palm.Gpu.Sharding.Mpi;

/// <summary>How this process was started: by MPICH's hydra (mpiexec), Open MPI's mpirun, or Slurm's srun.</summary>
public sealed record Launch(string Launcher, int Rank, int Size);

/// <summary>
/// A job of several palm processes on MPI. <see cref="Detect"/> reads the launcher's environment, so a plain
/// `palm` (or `mpiexec -n 1`) never loads MPI; <see cref="Start"/> initialises MPI (thread-multiple: ranks of
/// different groups run collectives from their own threads at once), checks the job, exchanges pids and hosts for
/// messages, and starts the failure watchdog.
///
/// Watchdog: every process sends every other a heartbeat each second on a communicator of its own and listens for
/// theirs. A process silent for PALM_MPI_TIMEOUT seconds (default 30) — stopped, unreachable, or dead under a
/// launcher that lets the others run on — is named on stderr, and the job is ended with MPI_Abort (exit 4): a
/// collective waiting for it never hangs. (A rank that simply exits or is killed is usually seen first by the launcher:
/// hydra SIGKILLs the rest of the job at once and names the dead pid, which palm's start-up line maps to its rank.)
/// </summary>
public sealed unsafe class MpiJob : IProcessGroup
{
    public const int LostPeerExitCode = 4;
    readonly int _comm;
    readonly MpiJob? _root;
    readonly (int Pid, string Host)[] _peers;

    MpiJob(int comm, int index, int count, (int, string)[] peers, MpiJob? root)
    {
        _comm = comm;
        Index = index;
        Count = count;
        _peers = peers;
        _root = root;
    }

    public int Count { get; }
    public int Index { get; }
    public bool IsLeader => Index == 0;
    public int OnThisMachine => _peers.Count(p => p.Host == _peers[Index].Host);
    /// <summary>Where the watchdog reports (stderr, also on processes whose ordinary output is muted).</summary>
    public TextWriter ErrorOut { get; set; } = Console.Error;
    public string Library { get; private set; } = "";
    public TimeSpan Timeout { get; private set; }

    /// <summary>Null for a single process (no launcher, or a launcher's job of one); else the launch, after checking it is one palm can join.</summary>
    public static Launch? Detect(IDictionary<string, string?>? env = null)
    {
        string? Get(string k) => env is null ? Environment.GetEnvironmentVariable(k) : env.TryGetValue(k, out var v) ? v : null;
        static int? Int(string? s) => int.TryParse(s, out int v) ? v : null;
        if (Int(Get("OMPI_COMM_WORLD_SIZE")) is > 1 and var ompi)
            throw new ConfigException($"palm was started by Open MPI's mpirun ({ompi} processes), but it binds MPICH's ABI (libmpich.so.12), whose handles Open MPI does not share; " +
                                      "launch it with MPICH's mpiexec (Debian/Ubuntu: apt-get install mpich) or with srun over MPICH");
        if (Int(Get("PMI_SIZE")) is { } size && Int(Get("PMI_RANK")) is { } rank)
            return size > 1 ? new Launch(Get("SLURM_STEP_ID") is null ? "mpiexec (hydra)" : "srun (PMI)", rank, size) : null;
        if (Int(Get("SLURM_STEP_NUM_TASKS")) is > 1 and var tasks && Int(Get("SLURM_PROCID")) is { } procid)
            return new Launch("srun", procid, tasks);
        return null;
    }

    /// <summary>Initialises MPI for a detected launch; any problem is a <see cref="ConfigException"/> of one line.</summary>
    public static MpiJob Start(Launch launch)
    {
        if (MpiNative.Load() is { } why)
            throw new ConfigException($"{launch.Launcher} started {launch.Size} palm processes but {why}: install MPICH (Debian/Ubuntu: apt-get install mpich), " +
                                      "or point PALM_MPI_LIBRARY at its libmpich.so.12");
        int provided = 0, argc = 0;
        nint argv = 0;
        int initialized = 0;
        MpiNative.Check(MpiNative.MPI_Initialized(&initialized), "MPI_Initialized");
        if (initialized == 0) MpiNative.Check(MpiNative.MPI_Init_thread(&argc, &argv, MpiNative.ThreadMultiple, &provided), "MPI_Init_thread");
        if (provided < MpiNative.ThreadMultiple)
            throw new ConfigException($"the MPI library gives thread level {provided}, but palm needs MPI_THREAD_MULTIPLE (3): use an MPICH built with thread support (Debian's is)");
        int rank, size;
        MpiNative.Check(MpiNative.MPI_Comm_set_errhandler(MpiNative.CommWorld, MpiNative.ErrorsReturn), "MPI_Comm_set_errhandler");
        MpiNative.Check(MpiNative.MPI_Comm_rank(MpiNative.CommWorld, &rank), "MPI_Comm_rank");
        MpiNative.Check(MpiNative.MPI_Comm_size(MpiNative.CommWorld, &size), "MPI_Comm_size");
        if (size != launch.Size)
            throw new ConfigException($"{launch.Launcher} started {launch.Size} processes but MPI sees {size}: under Slurm use srun --mpi=pmi2 (or pmix) with an MPICH built for it, or mpiexec inside the allocation");
        var name = stackalloc byte[MpiNative.MaxProcessorName + 1];
        int length = 0;
        MpiNative.Check(MpiNative.MPI_Get_processor_name(name, &length), "MPI_Get_processor_name");
        var version = stackalloc byte[8192];
        int vlen = 0;
        MpiNative.MPI_Get_library_version(version, &vlen);
        int world = Dup(MpiNative.CommWorld);
        var job = new MpiJob(world, rank, size, new (int, string)[size], null)
        {
            Library = System.Text.RegularExpressions.Regex.Replace(System.Text.Encoding.ASCII.GetString(version, vlen).Split('\n')[0].Trim(), @"\s+", " "),
            Timeout = TimeSpan.FromSeconds(double.TryParse(Environment.GetEnvironmentVariable("PALM_MPI_TIMEOUT"), System.Globalization.CultureInfo.InvariantCulture, out double t) && t > 0 ? t : 30),
        };
        // Pids and hosts, so every message can say which process is which.
        var mine = new byte[4 + MpiNative.MaxProcessorName];
        BitConverter.TryWriteBytes(mine, Environment.ProcessId);
        new ReadOnlySpan<byte>(name, Math.Min(length, MpiNative.MaxProcessorName)).CopyTo(mine.AsSpan(4));
        var all = new byte[mine.Length * size];
        job.AllGather(mine, all);
        for (int p = 0; p < size; p++)
        {
            var block = all.AsSpan(p * mine.Length, mine.Length);
            job._peers[p] = (BitConverter.ToInt32(block), System.Text.Encoding.ASCII.GetString(block[4..]).TrimEnd('\0'));
        }
        job.StartWatchdog();
        return job;
    }

    static int Dup(int comm)
    {
        int dup;
        MpiNative.Check(MpiNative.MPI_Comm_dup(comm, &dup), "MPI_Comm_dup");
        MpiNative.Check(MpiNative.MPI_Comm_set_errhandler(dup, MpiNative.ErrorsReturn), "MPI_Comm_set_errhandler");
        return dup;
    }

    MpiJob Root => _root ?? this;

    public IProcessGroup Duplicate() => new MpiJob(Dup(_comm), Index, Count, _peers, Root);

    public string Describe(int process) => $"process {process} (pid {_peers[process].Pid} on {_peers[process].Host})";

    /// <summary>One line naming every process, printed by the leader at start-up.</summary>
    public string DescribeAll() => string.Join(", ", Enumerable.Range(0, Count).Select(Describe));

    public void AllGather(ReadOnlySpan<byte> mine, Span<byte> all)
    {
        if (all.Length != mine.Length * Count) throw new ArgumentException($"AllGather: {mine.Length} bytes from each of {Count} processes need {mine.Length * Count}, got {all.Length}");
        // Large gathers go in pieces: MPI counts are 32-bit.
        const int Chunk = 1 << 30;
        if (mine.Length > Chunk)
        {
            var part = new byte[(long)Chunk * Count];
            for (int at = 0; at < mine.Length; at += Chunk)
            {
                int n = Math.Min(Chunk, mine.Length - at);
                AllGather(mine.Slice(at, n), part.AsSpan(0, n * Count));
                for (int p = 0; p < Count; p++) part.AsSpan(p * n, n).CopyTo(all.Slice(p * mine.Length + at, n));
            }
            return;
        }
        fixed (byte* s = mine)
        fixed (byte* r = all)
        {
            int request;
            MpiNative.Check(MpiNative.MPI_Iallgather(s, mine.Length, MpiNative.Byte, r, mine.Length, MpiNative.Byte, _comm, &request), "MPI_Iallgather");
            Wait(&request, "MPI_Iallgather");
        }
    }

    /// <summary>Polls a request to completion; gives up when the watchdog has declared a process lost.</summary>
    void Wait(int* request, string call)
    {
        var spin = new SpinWait();
        while (true)
        {
            int done;
            MpiNative.Check(MpiNative.MPI_Test(request, &done, MpiNative.StatusIgnore), call);
            if (done != 0) return;
            if (Root._lost is { } lost) throw new MpiException(lost);
            spin.SpinOnce(sleep1Threshold: 40);
        }
    }

    // ---- failure watchdog ---------------------------------------------------------------------------

    volatile string? _lost;
    volatile bool _stopping;
    Thread? _watchdog;

    void StartWatchdog()
    {
        if (Count == 1) return;
        int comm = Dup(MpiNative.CommWorld);
        _watchdog = new Thread(() => Watch(comm)) { IsBackground = true, Name = "palm-mpi-watchdog" };
        _watchdog.Start();
    }

    void Watch(int comm)
    {
        const int Tag = 77;
        var sendBuf = (byte*)NativeMemory.Alloc(1);
        var recvBufs = (byte*)NativeMemory.Alloc((nuint)Count);
        var recv = new int[Count];
        var lastSeen = new long[Count];
        long now = Stopwatch.GetTimestamp(), lastSent = 0;
        for (int p = 0; p < Count; p++) { recv[p] = MpiNative.RequestNull; lastSeen[p] = now; }
        try
        {
            while (!_stopping)
            {
                now = Stopwatch.GetTimestamp();
                if (Stopwatch.GetElapsedTime(lastSent, now).TotalSeconds >= 1)
                {
                    for (int p = 0; p < Count; p++)
                    {
                        if (p == Index) continue;
                        int send;
                        MpiNative.Check(MpiNative.MPI_Isend(sendBuf, 1, MpiNative.Byte, p, Tag, comm, &send), "MPI_Isend");
                        MpiNative.Check(MpiNative.MPI_Request_free(&send), "MPI_Request_free");
                    }
                    lastSent = now;
                }
                for (int p = 0; p < Count; p++)
                {
                    if (p == Index) continue;
                    fixed (int* req = &recv[p])
                    {
                        if (*req == MpiNative.RequestNull)
                            MpiNative.Check(MpiNative.MPI_Irecv(recvBufs + p, 1, MpiNative.Byte, p, Tag, comm, req), "MPI_Irecv");
                        int done;
                        // Drain every heartbeat that has arrived.
                        while (true)
                        {
                            MpiNative.Check(MpiNative.MPI_Test(req, &done, MpiNative.StatusIgnore), "MPI_Test");
                            if (done == 0) break;
                            lastSeen[p] = Stopwatch.GetTimestamp();
                            MpiNative.Check(MpiNative.MPI_Irecv(recvBufs + p, 1, MpiNative.Byte, p, Tag, comm, req), "MPI_Irecv");
                        }
                    }
                    double silent = Stopwatch.GetElapsedTime(lastSeen[p]).TotalSeconds;
                    if (silent > Timeout.TotalSeconds)
                    {
                        Lose($"lost {Describe(p)}: no heartbeat for {silent:F0} s (PALM_MPI_TIMEOUT={Timeout.TotalSeconds:G}); it died, stopped or became unreachable. " +
                             "Ending the job; continue from the last complete checkpoint with the same command plus --resume latest");
                        return;
                    }
                }
                Thread.Sleep(100);
            }
            for (int p = 0; p < Count; p++)
                fixed (int* req = &recv[p])
                    if (*req != MpiNative.RequestNull)
                    {
                        MpiNative.MPI_Cancel(req);
                        int done;
                        MpiNative.MPI_Test(req, &done, MpiNative.StatusIgnore);
                    }
        }
        catch (MpiException e) when (!_stopping)
        {
            // A broken connection usually means a process died, which the launcher is about to report by pid (its banner
            // names the dead process; palm's start-up line maps pids to processes): give it that moment before aborting.
            Lose($"the MPI connection failed ({e.Message}); ending the job; continue with --resume latest", TimeSpan.FromSeconds(3));
        }
    }

    void Lose(string message, TimeSpan graceBeforeAbort = default)
    {
        try
        {
            ErrorOut.WriteLine($"palm: error: {Describe(Index)}: {message}");
            ErrorOut.Flush();
        }
        catch (IOException) { }
        _lost = message;
        if (graceBeforeAbort > TimeSpan.Zero) Thread.Sleep(graceBeforeAbort);
        // MPI_Abort ends every process of the job (the launcher kills them); if it cannot, exit on our own.
        var fallback = new Thread(() => { Thread.Sleep(5000); Environment.Exit(LostPeerExitCode); }) { IsBackground = true };
        fallback.Start();
        MpiNative.MPI_Abort(MpiNative.CommWorld, LostPeerExitCode);
        Environment.Exit(LostPeerExitCode);
    }

    /// <summary>Ends MPI at a normal exit (every process calls it; it synchronises them).</summary>
    public void Finish()
    {
        this.Barrier();
        _stopping = true;
        _watchdog?.Join();
        MpiNative.MPI_Finalize();
    }
}
