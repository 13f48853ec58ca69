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
return parsed.Invoke();
