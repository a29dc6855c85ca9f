"""The options of a transcription run (``TranscribeOptions``): routing, batching, and the decoding options.

No torch, no transformers: the CLI, the server, the batch job and both runtimes read them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .segments import TASKS, DecodeOptions

LONG_FORM_MODES = ("sequential", "batched")


@dataclass
class TranscribeOptions(DecodeOptions):
    """Options of a transcription run: routing, batching, and the decoding options (``DecodeOptions``)."""

    language: str | None = None
    """Force this language (skip detection)."""
    languages: list[str] | None = None
    """Restrict detection to these candidates (plus the registry's languages when routing to adapters)."""
    adapter: str = "auto"
    """``auto``, ``none`` or an adapter reference."""
    domain: str | list[str] | None = None
    """Preferred domain(s) for adapter routing, tried in order."""
    threshold: float = 0.5
    """Minimum language probability to use a language's adapter."""
    per_segment: bool = False
    """Detect and route every speech segment (VAD) on its own (code-switched recordings)."""
    vad: bool = False
    """Decode speech regions only (Silero VAD): silence is skipped, a file without speech gives no text."""
    long_form: str = "sequential"
    """``sequential``: Whisper's algorithm, window after window, each prompted with the tokens before it.
    ``batched``: VAD pieces of up to 30 s decoded in batches at the first temperature (faster, no context across
    pieces, no fallback)."""
    batch_size: int = 8
    """Pieces per encoder / generate call."""
    top_k: int = 5
    """Language probabilities reported per file."""
    merge: bool = False
    """Merge an adapter into the weights while a group uses it (into a float32 copy when the base is 8-bit)."""
    combine: str | None = None
    """With --domain: combine the language adapter and the domain adapter (peft add_weighted_adapter)."""
    combine_weights: tuple[float, float] = (1.0, 1.0)
    """Weights of (language adapter, domain adapter) in the combination."""
    consult_below: float = 0.8
    """When the base's top language probability is below this, ask the candidate adapters (0 disables)."""
    batching: str = "grouped"
    """'grouped': one generate per adapter; 'mixed': rows of different adapters in one generate call (peft
    adapter_names; decoded without temperature fallback, which re-batches rows and peft cannot follow)."""

    def validate(self, languages: dict[str, int] | None = None) -> None:
        """Raise ValueError naming the first bad option and what is allowed."""
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {list(TASKS)}")
        if self.beam_size is not None and self.beam_size < 1:
            raise ValueError(f"beam size {self.beam_size} must be 1 (greedy) or more")
        if not self.temperature or any(t < 0 for t in self.temperature):
            raise ValueError(f"temperature {self.temperature}: give one or more values >= 0, e.g. 0,0.2,0.4")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 440:
            raise ValueError(f"max new tokens {self.max_new_tokens} must be between 1 and 440")
        if self.long_form not in LONG_FORM_MODES:
            raise ValueError(f"long-form mode {self.long_form!r} is not one of {list(LONG_FORM_MODES)}")
        if self.batching not in ("grouped", "mixed"):
            raise ValueError(f"batching {self.batching!r} is not one of ['grouped', 'mixed']")
        if self.batch_size < 1:
            raise ValueError(f"batch size {self.batch_size} must be 1 or more")
        if languages:
            for code in [self.language, *(self.languages or [])]:
                if code is not None and code not in languages:
                    raise ValueError(
                        f"language {code!r} is not one of the base's languages: {', '.join(sorted(languages))}"
                    )

    def decode_options(self) -> DecodeOptions:
        return DecodeOptions(**{f.name: getattr(self, f.name) for f in fields(DecodeOptions)})
