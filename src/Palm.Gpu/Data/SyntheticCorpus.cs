using System.Text;

namespace Palm.Gpu.Data;

/// <summary>
/// The built-in default corpus, so `palm train` works with no download: templated English sentences
/// and digit arithmetic, generated deterministically from a seed. It has real structure to learn
/// (agreement, fixed phrases, carries in addition) and a known floor well below ln(vocab).
/// </summary>
public static class SyntheticCorpus
{
    static readonly string[] Names = ["Ada", "Brook", "Cyrus", "Dora", "Emil", "Farah", "Gus", "Hana", "Ivo", "June", "Kai", "Lena"];
    static readonly string[] Animals = ["fox", "owl", "cat", "horse", "heron", "badger", "otter", "crow", "deer", "wolf"];
    static readonly string[] Colours = ["red", "grey", "black", "white", "brown", "golden", "silver", "green"];
    static readonly string[] Places = ["the river", "the old mill", "the market", "the hill", "the forest", "the harbour", "the library", "the garden"];
    static readonly string[] Verbs = ["walked to", "ran past", "looked at", "painted", "visited", "remembered", "left"];
    static readonly string[] Objects = ["apples", "letters", "stones", "candles", "books", "maps", "coins", "shells"];

    /// <summary>Generates <paramref name="documents"/> documents of a few sentences each.</summary>
    public static List<string> Generate(int documents = 4000, ulong seed = 1234)
    {
        var rng = new SplitMix64(seed);
        var docs = new List<string>(documents);
        var sb = new StringBuilder();
        for (int d = 0; d < documents; d++)
        {
            sb.Clear();
            int sentences = 3 + (int)(rng.Next() % 6);
            for (int s = 0; s < sentences; s++)
            {
                if (s > 0) sb.Append(' ');
                sb.Append(Sentence(ref rng));
            }
            sb.Append('\n');
            docs.Add(sb.ToString());
        }
        return docs;
    }

    static string Pick(string[] xs, ref SplitMix64 rng) => xs[rng.Next() % (ulong)xs.Length];

    static string Sentence(ref SplitMix64 rng)
    {
        switch (rng.Next() % 6)
        {
            case 0: return $"The {Pick(Colours, ref rng)} {Pick(Animals, ref rng)} {Pick(Verbs, ref rng)} {Pick(Places, ref rng)}.";
            case 1:
            {
                int n = 2 + (int)(rng.Next() % 11);
                return $"{Pick(Names, ref rng)} has {n} {Pick(Objects, ref rng)} and gives {n / 2} of them away, keeping {n - n / 2}.";
            }
            case 2:
            {
                long a = (long)(rng.Next() % 1000), b = (long)(rng.Next() % 1000);
                return $"{a} + {b} = {a + b}.";
            }
            case 3:
            {
                long a = (long)(rng.Next() % 100), b = (long)(rng.Next() % 100);
                return $"{a} times {b} is {a * b}.";
            }
            case 4: return $"{Pick(Names, ref rng)} {Pick(Verbs, ref rng)} {Pick(Places, ref rng)} with a {Pick(Colours, ref rng)} {Pick(Animals, ref rng)}.";
            default:
            {
                long a = 100 + (long)(rng.Next() % 900), b = (long)(rng.Next() % 100);
                return $"{a} - {b} = {a - b}.";
            }
        }
    }
}
