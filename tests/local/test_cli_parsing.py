"""Parsing what the `ollama` binary prints (the layouts Ollama documents)."""

from __future__ import annotations

from app.local.cli_mode import parse_duration, parse_list_table, parse_size, parse_verbose_stats
from app.ollama import model_from_tag


def test_list_table_is_parsed_by_column_positions() -> None:
    out = (
        "NAME               ID              SIZE      MODIFIED     \n"
        "llama3.2:latest    a80c4f17acd5    2.0 GB    2 weeks ago    \n"
        "hf.co/o/m:Q4_K_M   0123456789ab    934 MB    Less than a second ago    \n"
    )
    models = [model_from_tag(entry) for entry in parse_list_table(out)]
    assert [(m.name, m.id, m.size) for m in models] == [
        ("llama3.2:latest", "a80c4f17acd5", 2_000_000_000),
        ("hf.co/o/m:Q4_K_M", "0123456789ab", 934_000_000),
    ]
    assert models[0].modified == "2 weeks ago"


def test_header_only_means_no_models() -> None:
    assert parse_list_table("NAME    ID    SIZE    MODIFIED \n") == []


def test_sizes_and_durations() -> None:
    assert parse_size("12 GB") == 12_000_000_000
    assert parse_size("512 B") == 512
    assert parse_size("?") == 0
    assert parse_duration("1m2.5s") == 62.5
    assert parse_duration("250ms") == 0.25
    assert parse_duration("soon") is None


def test_verbose_stats_become_api_metric_names() -> None:
    stats = parse_verbose_stats(
        "total duration:       1.5s\n"
        "prompt eval count:    26 token(s)\n"
        "eval count:           298 token(s)\n"
        "eval duration:        2.98s\n"
        "eval rate:            100.00 tokens/s\n"
    )
    assert stats == {
        "total_duration": 1_500_000_000,
        "prompt_eval_count": 26,
        "eval_count": 298,
        "eval_duration": 2_980_000_000,
    }
