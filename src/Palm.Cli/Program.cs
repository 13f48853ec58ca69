using System.CommandLine;
using Palm.Cli;

// palm: train, sample, evaluate, plan and benchmark PaLM-style models. See README.md for every verb.
var root = new RootCommand("palm — train and study PaLM-architecture language models on one machine");
root.Subcommands.Add(TrainCommand.Create());
root.Subcommands.Add(GenerateCommand.Create());
root.Subcommands.Add(EvalCommand.Create());
root.Subcommands.Add(PlanCommand.Create());
root.Subcommands.Add(BenchCommand.Create());
root.Subcommands.Add(AblateCommand.Create());
root.Subcommands.Add(DevicesCommand.Create());
root.Subcommands.Add(KernelsCommand.Create());
root.Subcommands.Add(PlotCommand.Create());
root.Subcommands.Add(TokenizerCommands.CreateTokenizerCommand());
root.Subcommands.Add(TokenizerCommands.CreateTokenizeCommand());
var parsed = root.Parse(args);
// Parse errors read like every other user error: one line each, "palm: error:", exit 2, no .NET type names.
if (parsed.Errors.Count > 0)
{
    foreach (var e in parsed.Errors) Console.Error.WriteLine($"palm: error: {Cli.PlainParseError(e.Message)}");
    return 2;
}
// Launched as several processes (mpiexec, srun): join the job. A plain `palm` never loads MPI.
Palm.Gpu.Sharding.Mpi.MpiJob? job = null;
bool speaks = true;   // only process 0 of a job prints
try
{
    if (Palm.Gpu.Sharding.Mpi.MpiJob.Detect() is { } launch)
    {
        speaks = launch.Rank == 0;
        job = Palm.Gpu.Sharding.Mpi.MpiJob.Start(launch);
        job.ErrorOut = Console.Error;
        Palm.Gpu.Sharding.ProcessGroups.World = job;
        if (job.IsLeader)
            Console.Error.WriteLine($"palm: {job.Count} processes under {launch.Launcher} ({job.Library}): {job.DescribeAll()}");
        else
        {
            // Process 0 speaks for the job; errors every process meets are agreed on and printed there.
            Console.SetOut(TextWriter.Null);
            Console.SetError(TextWriter.Null);
        }
        Cli.CheckSameCommand(job, args);
    }
}
catch (Palm.Gpu.Model.ConfigException e)
{
    if (speaks) (job?.ErrorOut ?? Console.Error).WriteLine($"palm: error: {e.Message}");
    // With a job, the error came from CheckSameCommand and every process has it: all wait until process 0 has
    // printed, since the launcher kills the rest as soon as one exits with an error.
    job?.Finish();
    return 2;
}
int status = parsed.Invoke();
// A verb's error that every process raised alike (a mesh the job cannot split, an agreed checkpoint failure): the
// same wait, so its line is not lost. A process that failed alone exits at once and the launcher ends the job.
if (status == 0 || Palm.Cli.Cli.FailedJobWide) job?.Finish();
return status;
