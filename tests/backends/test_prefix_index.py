"""The prefix index on its own: prompts' keys, each backend's modelled prompt cache, its
bounds in entries and bytes, and the client-named sessions."""

from __future__ import annotations

import gc
import tracemalloc

from app.backends.prefix import (
    BLOCK_BYTES,
    BackendPrefixes,
    ChatMemo,
    PrefixHolders,
    SessionHomes,
    SessionPrompts,
    chat_prompt,
    context_keys,
    generate_prompt,
    session_key,
)

SYSTEM = "You are a coding agent. " * 400  # about 9,600 bytes: five blocks


def chat(*texts: str, system: str = SYSTEM) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}]
    roles = ("user", "assistant")
    messages += [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]
    return messages


def test_prompts_share_the_keys_of_what_they_share() -> None:
    a = chat_prompt("m", chat("fix the bug in parser.py"))
    b = chat_prompt("m", chat("write tests for cli.py"))
    blocks = -(-len(SYSTEM) // BLOCK_BYTES)
    assert a.keys[:blocks] == b.keys[:blocks], "the shared system prompt"
    assert a.keys[blocks] != b.keys[blocks]
    assert chat_prompt("other", chat("fix the bug in parser.py")).keys[0] != a.keys[0]
    tools = [{"type": "function", "function": {"name": "bash", "description": "Run it"}}]
    assert chat_prompt("m", chat("x"), tools=tools).keys[0] != a.keys[0]
    # a system prompt that differs only at its end shares the blocks before the difference
    c = chat_prompt("m", chat("fix the bug in parser.py", system=SYSTEM[:-10] + "2026-01-02"))
    assert c.keys[: blocks - 1] == a.keys[: blocks - 1] and c.keys[blocks - 1] != a.keys[blocks - 1]
    # estimated tokens grow with the text (4 bytes a token before any backend said more)
    assert a.ends == sorted(a.ends)
    assert abs(a.tokens - (len(SYSTEM) + len("fix the bug in parser.py")) / 4) < 10


def test_the_next_turn_extends_the_reply_as_it_is_sent_back() -> None:
    first = chat_prompt("m", chat("hi"))
    reply = first.extended("assistant", "hello there")
    second = chat_prompt("m", chat("hi", "hello there", "and now?"))
    assert second.keys[: len(first.keys) + len(reply.keys)] == [*first.keys, *reply.keys]
    assert second.ends[len(first.keys)] == reply.tokens < second.tokens


def test_the_chat_memo_gives_the_keys_the_blocks_would_get_and_stays_bounded() -> None:
    """An agent's next turn resends its long messages: their block keys come from the memo,
    exactly as hashing them again gives them (the same message after different text gets
    its own keys), and the memo holds at most its bound."""
    memo = ChatMemo(max_entries=3)
    tool = "tool output line\n" * 400  # 6,800 bytes: four blocks
    turns = [chat(f"task {t}", "ok", tool, "fine", tool + "more") for t in range(3)]
    for messages in turns:
        for _ in range(2):  # the second time from the memo
            fresh, memoed = chat_prompt("m", messages), chat_prompt("m", messages, memo=memo)
            assert memoed.keys == fresh.keys
            assert memoed.ends == fresh.ends and memoed.text_bytes == fresh.text_bytes
    assert 0 < len(memo) <= 3
    generated = generate_prompt("m", tool, system=SYSTEM, memo=memo)
    assert generated == generate_prompt("m", tool, system=SYSTEM)


def test_the_chat_memo_stays_within_its_keys_when_filled_past_them() -> None:
    """Thousands of sessions' long messages through a memo bounded at 1,000 keys: it never
    holds more, and what it gives stays what hashing gives."""
    memo = ChatMemo(max_entries=10_000, max_keys=1000)
    for i in range(2000):
        messages = chat(f"tool {i} " * 700, "ok")  # about 5,000 bytes: three blocks
        memoed = chat_prompt("m", messages, memo=memo)
        assert memo.keys <= 1000 and len(memo) <= 1000
        assert memoed.keys == chat_prompt("m", messages).keys
    assert memo.keys > 0


def test_a_sessions_next_turn_gets_the_keys_hashing_it_whole_gives() -> None:
    """A named session's turns through `SessionPrompts`: a turn that extends the last is
    resumed from it, and one that rewrote its history (compacted, edited a tool result to
    the same length, changed its tools or model) is hashed whole; either way the keys are
    exactly those of hashing the turn whole, and each turn is what the next resumes."""
    last, memo = SessionPrompts(), ChatMemo()
    tool = "tool output line\n" * 400
    tools = [{"type": "function", "function": {"name": "bash", "description": "Run it"}}]
    turns = [
        chat("task", "ok", tool),
        chat("task", "ok", tool, "done", "next"),  # grows: resumed
        chat("task", "ok", tool, "done", "next"),  # the same again
        chat("task", "ok", tool.replace("tool", "TOOL", 1), "done", "next", "x"),  # edited
        chat("summary of the task so far"),  # compacted: shorter
        chat("summary of the task so far", "ok"),
    ]
    for i, messages in enumerate(turns):
        sent = [dict(m) for m in messages]  # new objects, as a parsed body's
        got = chat_prompt("m", sent, session=7, memo=memo, last=last)
        whole = chat_prompt("m", messages, session=7)
        assert got.keys == whole.keys and got.text_bytes == whole.text_bytes, i
    resumed = last.resume(7, "m", None, turns[-1] + [{"role": "user", "content": "and?"}])
    assert resumed is not None and resumed.keys == whole.keys
    assert last.resume(7, "m", tools, turns[-1]) is None, "other tools"
    assert last.resume(7, "n", None, turns[-1]) is None, "another model"
    assert last.resume(8, "m", None, turns[-1]) is None, "another session"
    with_tools = chat_prompt("m", turns[-1], tools=tools, session=7, last=last)
    assert with_tools.keys == chat_prompt("m", turns[-1], tools=tools).keys


def test_session_prompts_stay_within_their_sessions_and_bytes() -> None:
    """Thousands of sessions' prompts through `SessionPrompts` bounded at 50 sessions and
    200,000 bytes: it never holds more, keeps the most recent, and a prompt larger than the
    whole bound is not kept."""
    last = SessionPrompts(max_sessions=50, max_bytes=200_000)
    for i in range(2000):
        messages = chat(f"session {i} " * (i % 400), "ok")
        chat_prompt("m", messages, session=i, last=last)
        assert len(last) <= 50 and last.bytes <= 200_000
    assert last.resume(1999, "m", None, messages) is not None
    assert last.resume(0, "m", None, chat("session 0 " * 0, "ok")) is None, "forgotten"
    huge = chat("x" * 300_000)
    chat_prompt("m", huge, session=5000, last=last)
    assert last.resume(5000, "m", None, huge) is None and last.bytes <= 200_000


def test_a_generates_context_is_matched_as_a_next_generate_sends_it_back() -> None:
    ids = list(range(1, 1300))
    finished = context_keys("m", ids)
    assert finished is not None
    follow = generate_prompt("m", "and then?", context=ids)
    assert follow is not None
    assert follow.keys[:3] == finished.keys[:3]  # the context's blocks of 512 ids
    assert follow.tokens_at(3) == 1299  # counted exactly
    assert generate_prompt("m", "x", context=[1, "two"]) is None  # type: ignore[list-item]


def test_a_generates_text_stays_found_when_its_context_replaces_it() -> None:
    """A generate is recorded as sent (system prompt and prompt as text); when it ends, its
    `context` ids stand for the same slot. A new session sending the same system prompt as
    text still finds it there, the next turn sending the context finds the whole
    conversation, and the slot is counted once."""
    backend = BackendPrefixes(slots=2, max_entries=1000)
    first = generate_prompt("m", "look at module1.py", system=SYSTEM)
    assert first is not None
    sequence = backend.record("m", first.keys, first.ends)
    ids = list(range(1, 2600))
    whole = context_keys("m", ids)
    assert whole is not None
    backend.record("m", whole.keys, whole.ends, replaces=sequence)
    other = generate_prompt("m", "look at module2.py", system=SYSTEM)
    assert other is not None
    blocks = -(-len(SYSTEM) // BLOCK_BYTES)
    assert backend.matched(other.keys) >= blocks, "the system prompt, as text"
    follow = generate_prompt("m", "now fix it", context=ids)
    assert follow is not None
    assert follow.keys[: len(whole.keys)] == whole.keys, "the next turn extends the context"
    assert backend.matched(follow.keys) == len(whole.keys), "the whole context"
    assert len(backend.models()) == 1
    # the next turn goes on in the same slot and keeps the text; a second session's prompt
    # takes the other slot, and a third pushes the oldest out, its text with it
    second = backend.record("m", follow.keys, follow.ends)
    assert backend.matched(other.keys) >= blocks
    assert backend.entries == len(follow.keys) + len(first.keys), "one slot, its text kept"
    longer = context_keys("m", [*ids, *range(3000, 3100)])
    assert longer is not None
    backend.record("m", longer.keys, longer.ends, replaces=second)
    assert backend.matched(other.keys) >= blocks, "the text kept turn after turn"
    two = generate_prompt("m", "two", system="another system prompt " * 200)
    three = generate_prompt("m", "three", system="a third system prompt " * 200)
    assert two is not None and three is not None
    backend.record("m", two.keys, two.ends)
    backend.record("m", three.keys, three.ends)
    assert backend.matched(other.keys) == 0 and backend.matched(follow.keys) == 0
    assert backend.entries == len(two.keys) + len(three.keys)


def test_a_backend_holds_its_last_prompts_per_model_and_matches_their_prefixes() -> None:
    backend = BackendPrefixes(slots=2, max_entries=1000)
    one = chat_prompt("m", chat("session one"))
    two = chat_prompt("m", chat("session two"))
    three = chat_prompt("m", chat("session three"))
    backend.record("m", one.keys, one.ends)
    assert backend.matched(one.keys) == len(one.keys)
    assert backend.matched(two.keys) == len(two.keys) - 1  # the system prompt only
    backend.record("m", two.keys, two.ends)
    backend.record("m", three.keys, three.ends)  # two slots: session one's prompt is gone
    assert backend.matched(one.keys) == len(one.keys) - 1
    assert backend.matched(three.keys) == len(three.keys)
    # a prompt that extends one goes on in its slot: session two is still there
    more = chat_prompt("m", chat("session three", "ok", "go on"))
    backend.record("m", more.keys, more.ends)
    assert backend.matched(two.keys) == len(two.keys)
    # another model's prompts take their own slots; an unloaded model's go
    other = chat_prompt("n", chat("x"))
    backend.record("n", other.keys, other.ends)
    assert backend.matched(two.keys) == len(two.keys)
    backend.forget_model("m")
    assert backend.matched(two.keys) == 0 and backend.models() == {"n"}


def test_what_a_prompt_would_push_out_of_a_full_cache() -> None:
    """Two slots holding two sessions that share the system prompt: a third session would
    push the older one's own part out (not the shared system prompt); the next turn of a
    session held there pushes nothing out."""
    backend = BackendPrefixes(slots=2, max_entries=1000)
    doc = "the file's text " * 500  # 8,000 bytes: about 2,000 tokens
    one, two = chat_prompt("m", chat("one " + doc)), chat_prompt("m", chat("two " + doc))
    assert backend.displaced("m", one.keys, 0) == 0  # free slots
    backend.record("m", one.keys, one.ends)
    backend.record("m", two.keys, two.ends)
    three = chat_prompt("m", chat("three " + doc))
    pushed = backend.displaced("m", three.keys, three.tokens_at(backend.matched(three.keys)))
    assert abs(pushed - (one.tokens - len(SYSTEM) / 4)) < 20
    again = chat_prompt("m", chat("two " + doc, "ok", "and?"))
    assert backend.displaced("m", again.keys, 0) == 0
    assert backend.displaced("other", three.keys, 0) == 0


def test_the_index_stays_within_its_entries_and_bytes_when_filled_past_them() -> None:
    """Thousands of long prompts of many models through one backend's index bounded at
    2,000 keys: it keeps at most that many, and its memory stays within 300 bytes a key."""
    limit = 2000
    gc.collect()
    tracemalloc.start()
    try:
        backend = BackendPrefixes(slots=4, max_entries=limit)
        base, _ = tracemalloc.get_traced_memory()
        for i in range(3000):
            prompt = chat_prompt(f"model{i % 400}", chat(f"session {i} " * 300, "ok", "more"))
            backend.record(prompt.model, prompt.keys, prompt.ends)
            assert backend.entries <= limit
        del prompt
        gc.collect()
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(backend) <= backend.entries <= limit
    assert backend.entries > limit * 0.9, "it is full, not emptied"
    assert used - base < limit * 300, f"{(used - base) / limit:.0f} bytes a key"


def test_sessions_are_bounded_and_expire() -> None:
    homes = SessionHomes(max_sessions=3, ttl=60)
    keys = [session_key("m", f"s{i}") for i in range(5)]
    for i, key in enumerate(keys):
        homes.remember(key, f"b{i}", 100.0 * i)
    assert len(homes) == 3
    assert homes.home(keys[0]) is None and homes.home(keys[4]) == ("b4", 400.0)
    assert session_key("m", "s1") != session_key("other", "s1")
    assert session_key("m", None) is None and homes.home(None) is None
    gone = SessionHomes(ttl=0)
    gone.remember(keys[0], "b0", 1.0)
    assert gone.home(keys[0]) is None


def test_the_fleets_matches_at_once_are_each_backends_own() -> None:
    """`PrefixHolders.levels` gives every backend the longest prefix its own search finds,
    as prompts come and go (slots taken over, the index trimmed, a backend detached)."""
    holders = PrefixHolders()
    backends = [BackendPrefixes(slots=2, max_entries=60) for _ in range(6)]
    for backend in backends:
        backend.attach(holders)
    systems = [SYSTEM, SYSTEM[:-200] + "other end", "short system"]
    prompts = [
        chat_prompt("m", chat(*[f"turn {s}.{t} " * 90 for t in range(turns)], system=system))
        for s, system in enumerate(systems * 3)
        for turns in (1, 3, 6)
    ]
    for i, prompt in enumerate(prompts):
        backends[(i * 7) % len(backends)].record("m", prompt.keys, prompt.ends)
        if i == len(prompts) // 2:
            backends[-1].detach()
        for probe in prompts:
            levels = holders.levels(probe.keys)
            for backend in backends:
                found = next((count for mask, count in levels if mask & backend.bit), 0)
                assert found == (backend.matched(probe.keys) if backend.bit else 0)
    kept = sum(len(backend) for backend in backends if backend.bit)
    assert 0 < len(holders) <= kept
    for backend in backends:
        backend.detach()
    assert len(holders) == 0
