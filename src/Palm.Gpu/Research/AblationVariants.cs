using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Gpu.Research;

/// <summary>
/// One value of one switch, applied on top of a shared base configuration. An ablation compares
/// several values of the SAME switch; everything else (data, seed, token budget, schedule) is shared.
/// </summary>
/// <param name="Name">what the user types in --variants, e.g. "serial"</param>
/// <param name="Switch">the setting it changes, e.g. "block"; every variant of an ablation names the same one</param>
/// <param name="Description">one line for the report</param>
/// <param name="Apply">(model, training) → (model, training) with this value of the switch set</param>
public sealed record AblationVariant(
    string Name, string Switch, string Description,
    Func<ModelConfig, TrainOptions, (ModelConfig Model, TrainOptions Training)> Apply);

/// <summary>
/// The known variants. Adding one is one line in <see cref="Builtin"/>. The rule an ablation must obey:
/// all its variants set the same switch, and each variant overrides everything the others change, so
/// two runs differ only in the named switch (checked by <see cref="Validate"/>).
/// </summary>
public static class AblationVariants
{
    static AblationVariant M(string name, string sw, string description, Func<ModelConfig, ModelConfig> model) =>
        new(name, sw, description, (c, t) => (model(c), t));
    static AblationVariant T(string name, string sw, string description, Func<TrainOptions, TrainOptions> training) =>
        new(name, sw, description, (c, t) => (c, training(t)));

    public static readonly IReadOnlyList<AblationVariant> Builtin =
    [
        M("parallel", "block", "y = x + Attn(LN(x)) + MLP(LN(x)) (PaLM)", c => c with { Block = BlockKind.Parallel }),
        M("serial", "block", "x' = x + Attn(LN1(x)); y = x' + MLP(LN2(x'))", c => c with { Block = BlockKind.Serial }),
        M("multi-query", "attention", "one shared key/value head (PaLM)", c => c with { Attention = AttentionKind.MultiQuery }),
        M("multi-head", "attention", "one key/value head per query head", c => c with { Attention = AttentionKind.MultiHead }),
        M("stored", "remat", "keep block activations for backward", c => c with { Rematerialize = false }),
        M("remat", "remat", "recompute block activations in backward", c => c with { Rematerialize = true }),
        T("unfactored", "optimizer", "Adafactor with full second moments (PaLM)", t => t with { Optimizer = t.Optimizer with { Factored = false } }),
        T("factored", "optimizer", "Adafactor with factored second moments", t => t with { Optimizer = t.Optimizer with { Factored = true } }),
    ];

    /// <summary>
    /// Resolves a comma-separated list against <paramref name="registry"/> (default: <see cref="Builtin"/>)
    /// and validates it against the base configuration; throws <see cref="ConfigException"/> naming the problem.
    /// </summary>
    public static IReadOnlyList<AblationVariant> Parse(string list, ModelConfig baseModel, TrainOptions baseTraining,
                                                       IReadOnlyList<AblationVariant>? registry = null)
    {
        registry ??= Builtin;
        var names = list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var chosen = new List<AblationVariant>();
        foreach (var name in names)
        {
            var v = registry.FirstOrDefault(r => string.Equals(r.Name, name, StringComparison.OrdinalIgnoreCase))
                ?? throw new ConfigException($"unknown variant '{name}'; known variants: {Known(registry)}");
            chosen.Add(v);
        }
        Validate(chosen, baseModel, baseTraining);
        return chosen;
    }

    /// <summary>
    /// The comparison rule: at least two distinct variants, all of one switch, and each variant's
    /// settings survive any other variant applied first — so the runs differ only in that switch.
    /// </summary>
    public static void Validate(IReadOnlyList<AblationVariant> variants, ModelConfig baseModel, TrainOptions baseTraining)
    {
        if (variants.Count < 2)
            throw new ConfigException($"an ablation compares at least two variants, got {variants.Count}; e.g. --variants parallel,serial");
        var duplicate = variants.GroupBy(v => v.Name, StringComparer.OrdinalIgnoreCase).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
            throw new ConfigException($"variant '{duplicate.Key}' is listed twice; name each variant once (use --seeds for repeats)");
        var switches = variants.Select(v => v.Switch).Distinct().ToList();
        if (switches.Count > 1)
            throw new ConfigException(
                $"variants {string.Join(", ", variants.Select(v => $"'{v.Name}' ({v.Switch})"))} change {switches.Count} different switches; " +
                $"an ablation compares values of ONE switch so that the runs differ in nothing else, e.g. --variants {Example(switches[0])}");

        // Each variant must fully determine what the others change: applying w then v must equal v alone.
        foreach (var v in variants)
        {
            var alone = v.Apply(baseModel, baseTraining);
            foreach (var w in variants)
            {
                var (wm, wt) = w.Apply(baseModel, baseTraining);
                var both = v.Apply(wm, wt);
                if (both.Model != alone.Model || both.Training != alone.Training)
                    throw new ConfigException(
                        $"variant '{v.Name}' does not undo what '{w.Name}' changes, so the two runs would differ in more than the '{v.Switch}' switch; " +
                        "each variant of a switch must set the same fields");
            }
        }
        var configs = variants.Select(v => v.Apply(baseModel, baseTraining)).ToList();
        for (int i = 0; i < configs.Count; i++)
            for (int j = i + 1; j < configs.Count; j++)
                if (configs[i] == configs[j])
                    throw new ConfigException($"variants '{variants[i].Name}' and '{variants[j].Name}' give the same configuration; nothing would be compared");
    }

    static string Known(IReadOnlyList<AblationVariant> registry) =>
        string.Join("; ", registry.GroupBy(r => r.Switch).Select(g => $"{g.Key}: {string.Join(", ", g.Select(r => r.Name))}"));

    static string Example(string sw) => string.Join(",", Builtin.Where(b => b.Switch == sw).Select(b => b.Name).DefaultIfEmpty("parallel,serial"));
}
