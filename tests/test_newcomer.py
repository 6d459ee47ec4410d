"""What a new user runs into first (issue #10): HF's GenerationConfig, HF's default output
length, a bf16 export on the CPU, and CPU thread defaults that hold up on a small machine."""

from __future__ import annotations

import json

import pytest

import t5rt
from conftest import export_tiny, hf_generate, make_t5, padded_inputs


@pytest.fixture(scope="module")
def v11():
    return make_t5(3, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@pytest.fixture(scope="module")
def export_v11(v11, tmp_path_factory):
    return export_tiny(v11, tmp_path_factory, "newcomer-v11")


@pytest.fixture(scope="module")
def rt_v11(export_v11):
    return t5rt.load(export_v11, device="cpu")


def test_transformers_generation_config_is_read(v11, rt_v11):
    from transformers import GenerationConfig as HFConfig

    ids, mask = padded_inputs(5)
    hf_cfg = HFConfig(num_beams=3, max_new_tokens=6, length_penalty=0.7, num_return_sequences=2)
    got = rt_v11.generate(input_ids=ids, attention_mask=mask, config=hf_cfg)
    want, _ = hf_generate(v11, ids, mask, num_beams=3, max_new_tokens=6, length_penalty=0.7,
                          num_return_sequences=2)
    assert got.sequences == want
    # options given beside the config still win, as in HF
    again = rt_v11.generate(input_ids=ids, attention_mask=mask, config=hf_cfg, num_beams=2,
                            num_return_sequences=1)
    want2, _ = hf_generate(v11, ids, mask, num_beams=2, max_new_tokens=6, length_penalty=0.7)
    assert again.sequences == want2


@pytest.mark.parametrize("bad, needle", [
    (dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5), "diversity_penalty"),
    ("beam", "transformers.GenerationConfig"),
    (42, "t5rt.GenerationConfig"),
])
def test_unusable_configs_are_refused_clearly(v11, rt_v11, bad, needle):
    if isinstance(bad, dict):
        from transformers import GenerationConfig as HFConfig

        bad = HFConfig(**bad)
    ids, mask = padded_inputs(1)
    with pytest.raises(t5rt.InvalidOptionError, match=needle):
        rt_v11.generate(input_ids=ids, attention_mask=mask, config=bad)
    solo = rt_v11.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5)
    assert solo.sequences == hf_generate(v11, ids, mask, max_new_tokens=5)[0]  # still works


def test_default_length_is_what_hf_generate_uses(v11, rt_v11):
    """No max_new_tokens / max_length: HF makes 20 new tokens at most, not the export's
    capacity (48 here)."""
    ids, mask = padded_inputs(7)
    got = rt_v11.generate(input_ids=ids, attention_mask=mask)
    want, _ = hf_generate(v11, ids, mask)
    assert _strip_pad(got.sequences) == want
    assert max(len(s) for s in got.sequences) == 20
    # HF's max_length counts the start token: max_length=9 -> at most 8 new tokens
    assert _strip_pad(rt_v11.generate(input_ids=ids, attention_mask=mask, max_length=9).sequences) == \
        hf_generate(v11, ids, mask, max_length=9)[0]


def _strip_pad(seqs, pad=0):
    """As conftest.hf_generate returns HF's rows: trailing pad ids dropped."""
    out = []
    for s in seqs:
        s = list(s)
        while s and s[-1] == pad:
            s.pop()
        out.append(s)
    return out


def test_model_generation_config_sets_the_defaults(tmp_path_factory):
    """A model whose generation_config.json says max_length=7 and num_beams=2: t5rt's default
    generate() is HF's default generate() for that model."""
    model = make_t5(11)
    model.generation_config.max_length = 7
    model.generation_config.num_beams = 2
    out = export_tiny(model, tmp_path_factory, "newcomer-gencfg")
    assert json.loads((out / "generation_config.json").read_text())["max_length"] == 7
    rt = t5rt.load(out, device="cpu")
    ids, mask = padded_inputs(2)
    got = rt.generate(input_ids=ids, attention_mask=mask)
    want, _ = hf_generate(model, ids, mask)
    assert _strip_pad(got.sequences) == want
    assert max(len(s) for s in got.sequences) <= 6


def test_bf16_export_on_cpu_says_what_to_do(tmp_path_factory):
    out = export_tiny(make_t5(4), tmp_path_factory, "newcomer-bf16", precision="bf16")
    with pytest.raises(t5rt.T5rtError) as e:
        t5rt.load(out, device="cpu")
    msg = str(e.value)
    assert "bf16" in msg and "device='cuda'" in msg and "--precision fp32" in msg
    assert "\n" not in msg


def test_cpu_threads_default_to_usable_cores_without_spinning(export_v11):
    from t5rt.runtime.device import usable_cpus

    n = usable_cpus()
    assert 1 <= n <= (__import__("os").cpu_count() or 1)
    rt = t5rt.load(export_v11, device="cpu")
    for sess in rt.runner.sessions.values():
        so = sess.session.get_session_options()
        assert so.intra_op_num_threads == n
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    rt1 = t5rt.load(export_v11, device="cpu", threads=1, cpu_spin=True)
    so = rt1.runner.sessions["decoder_step"].session.get_session_options()
    assert so.intra_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    ids, mask = padded_inputs(3)
    assert rt1.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6).sequences == \
        rt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6).sequences
    with pytest.raises(t5rt.InvalidOptionError, match="threads"):
        t5rt.load(export_v11, device="cpu", threads=0)


def test_bench_threads_option():
    from t5rt.bench.options import build_parser, options_from_args

    opts = options_from_args(build_parser().parse_args(["--threads", "1", "--peers", "none"]))
    assert opts.threads == 1
    with pytest.raises(t5rt.InvalidOptionError, match="threads"):
        options_from_args(build_parser().parse_args(["--threads", "0"]))


def test_every_package_folder_is_in_the_wheel():
    """pyproject lists packages by hand: a folder missing there works in an editable install and
    is absent from a wheel (`import t5rt` then fails for `pip install .` users)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(re.findall(r'"(t5rt[\w.]*)"', re.search(r"^packages = \[(.*)\]$", (root / "pyproject.toml").read_text(),
                                                           re.M).group(1)))
    folders = {".".join(p.parent.relative_to(root / "src").parts) for p in (root / "src" / "t5rt").rglob("__init__.py")}
    assert folders <= listed, f"not in pyproject.toml [tool.setuptools] packages: {sorted(folders - listed)}"


@pytest.mark.parametrize("bad", [5.5, "x", -1, True])
def test_hf_min_length_must_be_a_count(bad):
    """A generation config's min_length that is no token count is refused by name (it was cut to
    an int silently, or raised a bare ValueError)."""
    from t5rt.generation_config import GenerationConfig

    assert GenerationConfig.from_hf({"min_length": 5}).min_new_tokens == 4
    assert GenerationConfig.from_hf({"min_length": None}).min_new_tokens == 0
    with pytest.raises(t5rt.InvalidOptionError, match="min_length"):
        GenerationConfig.from_hf({"min_length": bad})
