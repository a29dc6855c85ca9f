"""Import a CTranslate2 Whisper model (the faster-whisper format) into transformers' format.

Hand-written because no library reads CTranslate2's ``model.bin`` back into PyTorch: ctranslate2 only converts
*to* its format. The layout is documented in CTranslate2's ``python/ctranslate2/specs/model_spec.py``;
``parse_ct2_model`` below is the format as read here (a test round-trips it through CTranslate2's converter).
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np

logger = logging.getLogger("lora_whisper")

# CTranslate2 dtype ids (ctranslate2/specs/model_spec.py: _DTYPE_TO_ID ordering)
_CT2_DTYPES = {
    0: np.float32,
    1: np.int8,
    2: np.int16,
    3: np.int32,
    4: np.float16,
    5: "bfloat16",
}


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this importer understands."""


def _read_parts(paths: list[Path]) -> bytes:
    return b"".join(Path(p).read_bytes() for p in paths)


def parse_ct2_model(data: bytes, source: str = "model.bin") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a CTranslate2 ``model.bin`` into ``{variable name: array}`` and ``{alias: target}``.

    Raises:
        CT2FormatError: naming ``source`` and the offset where parsing failed.
    """
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise CT2FormatError(f"{source}: truncated at byte {pos} (wanted {n} more bytes)")
        out = data[pos : pos + n]
        pos += n
        return out

    def u8() -> int:
        return take(1)[0]

    def u16() -> int:
        return struct.unpack("<H", take(2))[0]

    def u32() -> int:
        return struct.unpack("<I", take(4))[0]

    def string() -> str:
        n = u16()
        return take(n)[:-1].decode("utf-8")

    version = u32()
    if version < 5:
        raise CT2FormatError(f"{source}: unsupported CTranslate2 binary version {version}")
    name = string()
    if name != "WhisperSpec":
        raise CT2FormatError(f"{source}: model spec is {name!r}, expected 'WhisperSpec'")
    _revision = u32()
    variables: dict[str, np.ndarray] = {}
    for _ in range(u32()):
        var_name = string()
        ndim = u8()
        shape = tuple(u32() for _ in range(ndim))
        dtype_id = u8()
        nbytes = u32()
        raw = take(nbytes)
        dtype = _CT2_DTYPES.get(dtype_id)
        if dtype is None:
            raise CT2FormatError(f"{source}: variable {var_name!r} has unknown dtype id {dtype_id}")
        if dtype == "bfloat16":
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        variables[var_name] = arr.reshape(shape) if shape else arr.reshape(())
    aliases = {}
    for _ in range(u32()):
        alias = string()
        aliases[alias] = string()
    if pos != len(data):
        raise CT2FormatError(f"{source}: {len(data) - pos} unexpected trailing bytes")
    return variables, aliases


def _f(arr: np.ndarray):
    import torch

    if arr.dtype == np.int8:
        raise CT2FormatError("int8-quantized CTranslate2 models are not supported: convert with float16 or float32")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


class _Mapper:
    """Copies CTranslate2 variables ``v`` into a transformers state dict ``sd``, one kind of layer at a time."""

    def __init__(self, v: dict[str, np.ndarray]):
        self.v, self.sd = v, {}

    def ln(self, src: str, dst: str) -> None:
        self.sd[f"{dst}.weight"] = _f(self.v[f"{src}/gamma"])
        self.sd[f"{dst}.bias"] = _f(self.v[f"{src}/beta"])

    def lin(self, src: str, dst: str) -> None:
        self.sd[f"{dst}.weight"] = _f(self.v[f"{src}/weight"])
        self.sd[f"{dst}.bias"] = _f(self.v[f"{src}/bias"])

    def split_fused(self, src: str, dsts: list[str], no_bias: str) -> None:
        """One fused projection (q,k,v or k,v) into its parts; ``no_bias`` names the part without a bias."""
        w, b = _f(self.v[f"{src}/weight"]), _f(self.v[f"{src}/bias"])
        for wi, bi, dst in zip(w.chunk(len(dsts), 0), b.chunk(len(dsts), 0), dsts):
            self.sd[f"{dst}.weight"] = wi.clone()
            if dst != no_bias:
                self.sd[f"{dst}.bias"] = bi.clone()
            elif bi.abs().max() > 0:
                # Whisper's k_proj has no bias; CTranslate2 stores zeros for it (check, then drop).
                raise CT2FormatError(f"{src}: expected a zero bias for {dst}")

    def n_layers(self, prefix: str) -> int:
        i = 0
        while f"{prefix}/layer_{i}/ffn/linear_0/weight" in self.v:
            i += 1
        return i

    def self_attention_and_ffn(self, s: str, d: str) -> None:
        self.split_fused(
            f"{s}/self_attention/linear_0", [f"{d}.self_attn.{p}_proj" for p in "qkv"], f"{d}.self_attn.k_proj"
        )
        self.lin(f"{s}/self_attention/linear_1", f"{d}.self_attn.out_proj")
        self.ln(f"{s}/self_attention/layer_norm", f"{d}.self_attn_layer_norm")
        self.lin(f"{s}/ffn/linear_0", f"{d}.fc1")
        self.lin(f"{s}/ffn/linear_1", f"{d}.fc2")
        self.ln(f"{s}/ffn/layer_norm", f"{d}.final_layer_norm")

    def cross_attention(self, s: str, d: str) -> None:
        self.lin(f"{s}/attention/linear_0", f"{d}.encoder_attn.q_proj")
        kv = [f"{d}.encoder_attn.k_proj", f"{d}.encoder_attn.v_proj"]
        self.split_fused(f"{s}/attention/linear_1", kv, f"{d}.encoder_attn.k_proj")
        self.lin(f"{s}/attention/linear_2", f"{d}.encoder_attn.out_proj")
        self.ln(f"{s}/attention/layer_norm", f"{d}.encoder_attn_layer_norm")


def ct2_to_state_dict(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> tuple[dict, dict]:
    """Map CTranslate2 Whisper variables to a transformers state dict and config values."""
    v = dict(variables)
    for alias, target in aliases.items():
        v[alias] = v[target]
    m = _Mapper(v)
    n_enc, n_dec = m.n_layers("encoder"), m.n_layers("decoder")
    E, D = "model.encoder", "model.decoder"
    for c in (1, 2):
        m.lin(f"encoder/conv{c}", f"{E}.conv{c}")
    m.sd[f"{E}.embed_positions.weight"] = _f(v["encoder/position_encodings/encodings"])
    m.ln("encoder/layer_norm", f"{E}.layer_norm")
    for i in range(n_enc):
        m.self_attention_and_ffn(f"encoder/layer_{i}", f"{E}.layers.{i}")
    m.sd[f"{D}.embed_tokens.weight"] = _f(v["decoder/embeddings/weight"])
    m.sd[f"{D}.embed_positions.weight"] = _f(v["decoder/position_encodings/encodings"])
    m.ln("decoder/layer_norm", f"{D}.layer_norm")
    for i in range(n_dec):
        m.self_attention_and_ffn(f"decoder/layer_{i}", f"{D}.layers.{i}")
        m.cross_attention(f"decoder/layer_{i}", f"{D}.layers.{i}")
    return m.sd, _config(m.sd, v, n_enc, n_dec)


def _config(sd: dict, v: dict[str, np.ndarray], n_enc: int, n_dec: int) -> dict:
    """transformers ``WhisperConfig`` values read off the tensors' shapes (and the heads CTranslate2 stores)."""
    E, D = "model.encoder", "model.decoder"
    d_model = sd[f"{E}.layer_norm.weight"].shape[0]
    num_heads = int(v.get("encoder/num_heads", np.array(max(1, d_model // 64))))
    return dict(
        vocab_size=sd[f"{D}.embed_tokens.weight"].shape[0],
        num_mel_bins=sd[f"{E}.conv1.weight"].shape[1],
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=num_heads,
        decoder_attention_heads=int(v.get("decoder/num_heads", np.array(num_heads))),
        encoder_ffn_dim=sd[f"{E}.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=sd[f"{D}.layers.0.fc1.weight"].shape[0],
        max_source_positions=sd[f"{E}.embed_positions.weight"].shape[0],
        max_target_positions=sd[f"{D}.embed_positions.weight"].shape[0],
    )


def import_ct2(
    src: str | Path, out: str | Path, hub_id: str | None = None, model_files: list[Path] | None = None
) -> Path:
    """Convert a CTranslate2 Whisper model folder into a transformers model folder.

    Args:
        src: folder with ``model.bin`` (or ``model_files`` given), ``config.json`` and ``tokenizer.json``.
        out: folder to write (``save_pretrained`` layout: config, safetensors, processor, generation config).
        hub_id: the Hub id the weights come from (recorded as the base identity of adapters trained on them).
        model_files: parts to concatenate in order instead of ``src/model.bin`` (split packages).

    Returns:
        ``out`` as a Path.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    src, out = Path(src), Path(out)
    files = model_files or [src / "model.bin"]
    for f in files + [src / "config.json", src / "tokenizer.json"]:
        if not Path(f).is_file():
            raise FileNotFoundError(
                f"{f}: missing; a CTranslate2 Whisper folder needs model.bin, config.json, tokenizer.json"
            )
    variables, aliases = parse_ct2_model(_read_parts(files), source=str(files[0]))
    sd, cfg_values = ct2_to_state_dict(variables, aliases)
    ct2_cfg = json.loads((src / "config.json").read_text())

    processor = build_processor(src / "tokenizer.json", cfg_values["num_mel_bins"])
    gen = build_generation_config(processor.tokenizer, ct2_cfg, cfg_values["max_target_positions"])
    config = WhisperConfig(
        **cfg_values,
        pad_token_id=gen.pad_token_id,
        bos_token_id=gen.bos_token_id,
        eos_token_id=gen.eos_token_id,
        decoder_start_token_id=gen.decoder_start_token_id,
        begin_suppress_tokens=ct2_cfg.get("suppress_ids_begin"),
        suppress_tokens=ct2_cfg.get("suppress_ids"),
        tie_word_embeddings=True,
    )
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise CT2FormatError(
            f"{src}: weights do not map onto Whisper (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.tie_weights()
    model.generation_config = gen
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float32).save_pretrained(out)
    processor.save_pretrained(out)
    meta = {
        "hub_id": hub_id,
        "source": str(src),
        "format": "ctranslate2",
        "languages": len(getattr(gen, "lang_to_id", {}) or {}),
    }
    (out / "lora_whisper_base.json").write_text(json.dumps(meta, indent=2))
    logger.info("imported %s -> %s (%d variables)", src, out, len(variables))
    return out


def build_processor(tokenizer_json: str | Path, num_mel_bins: int = 80):
    """A WhisperProcessor from a CTranslate2/faster-whisper ``tokenizer.json``.

    The special tokens are registered as special and the 1501 timestamp tokens added (faster-whisper computes
    them arithmetically; transformers needs them in the vocabulary).
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer
    from transformers.tokenization_utils_base import AddedToken

    tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_json))
    specials = [t for t in json.loads(Path(tokenizer_json).read_text())["added_tokens"] if t.get("special")]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t["content"], special=True, normalized=False) for t in specials]}
    )
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(1501)])
    return WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=num_mel_bins), tokenizer=tokenizer)


def build_generation_config(tokenizer, ct2_config: dict, max_length: int = 448):
    """Whisper's multilingual generation config from the tokenizer and CTranslate2's config.json."""
    from transformers import GenerationConfig

    vocab = tokenizer.get_vocab()
    id_to_token = {i: t for t, i in vocab.items()}
    lang_to_id = {id_to_token[i]: i for i in ct2_config.get("lang_ids") or []}
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    gen = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        prev_sot_token_id=vocab.get("<|startofprev|>"),
        suppress_tokens=ct2_config.get("suppress_ids"),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin"),
        alignment_heads=ct2_config.get("alignment_heads"),
        is_multilingual=bool(lang_to_id),
        max_initial_timestamp_index=50,
        max_length=max_length,
    )
    if lang_to_id:
        gen.lang_to_id = lang_to_id
        gen.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
    return gen
