using Palm.Gpu.Data;

namespace Palm.Gpu.Inference;

/// <summary>
/// Keeps generated text valid UTF-8. With a byte-level vocabulary (byte tokens, byte fallback) a model can emit a byte
/// that cannot follow the bytes before it — a character cut short, a stray continuation byte — which decodes to
/// U+FFFD. Before each draw, every token whose bytes cannot continue the text is given −∞, so sampling (greedy or not)
/// only ever extends valid UTF-8. The state is what the next byte must be (RFC 3629's table, overlongs and surrogates
/// excluded); per state the allowed tokens and the state after each are tabulated once, so a step costs O(V).
/// </summary>
public sealed class Utf8Guard
{
    // States: 0 at a character boundary; otherwise the range the next byte must fall in and the state after it.
    static readonly (byte Lo, byte Hi, int Next)[] Pending =
    [
        default,            // 0 boundary
        (0x80, 0xBF, 0),    // 1: one continuation byte left
        (0x80, 0xBF, 1),    // 2: two left
        (0x80, 0xBF, 2),    // 3: three left
        (0xA0, 0xBF, 1),    // 4: after E0 (no overlong)
        (0x80, 0x9F, 1),    // 5: after ED (no surrogate)
        (0x90, 0xBF, 2),    // 6: after F0 (no overlong)
        (0x80, 0x8F, 2),    // 7: after F4 (≤ U+10FFFF)
    ];
    const int States = 8, Invalid = -1;

    readonly int[][] _next;   // [state][token] → state after the token's bytes, or Invalid

    Utf8Guard(IUtf8Tokenizer tokenizer)
    {
        int v = tokenizer.VocabSize;
        var bytes = new byte[v][];
        for (int t = 0; t < v; t++) bytes[t] = tokenizer.DecodeBytes([t]);
        _next = new int[States][];
        for (int s = 0; s < States; s++)
        {
            _next[s] = new int[v];
            for (int t = 0; t < v; t++)
            {
                int state = s;
                foreach (byte b in bytes[t]) if ((state = Step(state, b)) == Invalid) break;
                _next[s][t] = state;
            }
        }
    }

    /// <summary>A guard for a byte-level tokenizer; null for one whose tokens are not byte strings (nothing to guard).</summary>
    public static Utf8Guard? For(ITokenizer tokenizer) => tokenizer is IUtf8Tokenizer u ? new Utf8Guard(u) : null;

    /// <summary>The state at the start of generation: the prompt is text, so a character boundary.</summary>
    public const int Boundary = 0;

    static int Step(int state, byte b)
    {
        if (state != 0)
        {
            var (lo, hi, next) = Pending[state];
            return b >= lo && b <= hi ? next : Invalid;
        }
        return b switch
        {
            < 0x80 => 0,
            >= 0xC2 and <= 0xDF => 1,
            0xE0 => 4,
            0xED => 5,
            >= 0xE1 and <= 0xEF => 2,
            0xF0 => 6,
            >= 0xF1 and <= 0xF3 => 3,
            0xF4 => 7,
            _ => Invalid,   // 80–C1 (continuation, overlong lead), F5–FF
        };
    }

    /// <summary>Sets the logits of the tokens that cannot follow state <paramref name="state"/> to −∞ (unless none could).</summary>
    public void Mask(Span<float> logits, int state)
    {
        var next = _next[state];
        int n = Math.Min(logits.Length, next.Length);
        bool any = false;
        for (int t = 0; t < n; t++) any |= next[t] != Invalid;
        if (!any) return;
        for (int t = 0; t < n; t++) if (next[t] == Invalid) logits[t] = float.NegativeInfinity;
    }

    /// <summary>The state after <paramref name="token"/> (Boundary again if it was somehow invalid).</summary>
    public int Advance(int state, int token)
    {
        int s = (uint)token < (uint)_next[state].Length ? _next[state][token] : Invalid;
        return s == Invalid ? Boundary : s;
    }
}
