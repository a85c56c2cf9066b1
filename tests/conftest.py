"""Shared fixtures: tiny seeded models built in memory, offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(scope="session")
def harness():
    """One ephemeral Prefect API (SQLite in a temp dir) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def build_tiny_llama(seed: int = 0, hidden: int = 32, layers: int = 2, vocab: int = 96):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden + 8,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_llama():
    return build_tiny_llama()


@pytest.fixture
def input_ids():
    return torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server (tests/pg_server.py: password auth, free port, temp folder) per session."""
    from pg_server import PgServer

    with PgServer() as server:
        yield server


@pytest.fixture(params=["duckdb", "postgres"])
def new_catalog(request, tmp_path):
    """Makes an empty catalog of each backend: the DuckDB file, or a fresh schema in the session's PostgreSQL."""
    from brainstacks_core.lineage.catalog import Catalog

    if request.param == "duckdb":
        return lambda: Catalog(tmp_path / "c.duckdb")
    url = request.getfixturevalue("pg_server").url
    schema = "bs_t_" + os.urandom(6).hex()
    return lambda: Catalog(tmp_path / "unused.duckdb", url=url, pg_schema=schema)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (tests/s3_server.py), one per test module."""
    from s3_server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch):
    """:func:`s3` with its ``AWS_*`` variables set for the test."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    return s3
