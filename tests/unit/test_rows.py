"""producer.rows.normalise: every dataset layout -> prompt turns, reference answer, other columns."""
from __future__ import annotations

import hashlib
import json

import pytest

from producer.rows import normalise
from schemas.errors import DataError

WHERE = "data.jsonl line 7"


def norm(row, system=None, index=0):
    return normalise(row, index=index, where=WHERE, system=system)


def turns(prompt):
    return [(m.role, m.content) for m in prompt.messages]


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# --- layouts -----------------------------------------------------------------------------------------------------

LAYOUTS = [
    pytest.param({"messages": msgs(("user", "q"), ("assistant", "a"))},
                 [("user", "q")], "a", id="messages+answer"),
    pytest.param({"messages": msgs(("user", "q"))},
                 [("user", "q")], None, id="messages-prompt-only"),
    pytest.param({"messages": msgs(("system", "s"), ("user", "q"), ("assistant", "a"))},
                 [("system", "s"), ("user", "q")], "a", id="messages+system"),
    pytest.param({"messages": msgs(("user", "q1"), ("assistant", "a1"), ("user", "q2"))},
                 [("user", "q1"), ("assistant", "a1"), ("user", "q2")], None, id="messages-multi-turn-prompt-only"),
    pytest.param({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                    {"from": "gpt", "value": "a"}]},
                 [("system", "s"), ("user", "q")], "a", id="sharegpt"),
    pytest.param({"conversations": [{"from": "human", "value": "q"}]},
                 [("user", "q")], None, id="sharegpt-prompt-only"),
    pytest.param({"query": "q", "response": "a"},
                 [("user", "q")], "a", id="query-response"),
    pytest.param({"query": "q"},
                 [("user", "q")], None, id="query-only"),
    pytest.param({"query": "q", "response": "a", "history": [["q0", "a0"], ["q1", "a1"]], "system": "s"},
                 [("system", "s"), ("user", "q0"), ("assistant", "a0"), ("user", "q1"), ("assistant", "a1"),
                  ("user", "q")], "a", id="query-history-system"),
    pytest.param({"query": "q", "response": None, "system": None, "history": None},
                 [("user", "q")], None, id="query-null-columns"),
    pytest.param({"instruction": "Translate", "input": "", "output": "o"},
                 [("user", "Translate")], "o", id="alpaca-empty-input"),
    pytest.param({"instruction": "Translate", "input": "bonjour", "output": "hello"},
                 [("user", "Translate\nbonjour")], "hello", id="alpaca-input"),
    pytest.param({"instruction": "Translate"},
                 [("user", "Translate")], None, id="alpaca-prompt-only"),
    pytest.param({"problem": "1+1?", "solution": "2"},
                 [("user", "1+1?")], "2", id="problem-solution"),
    pytest.param({"problem": "1+1?"},
                 [("user", "1+1?")], None, id="problem-only"),
]


@pytest.mark.parametrize("row, expected_turns, ground_truth", LAYOUTS)
def test_layout(row, expected_turns, ground_truth):
    prompt = norm(row)
    assert turns(prompt) == expected_turns
    assert prompt.ground_truth == ground_truth


@pytest.mark.parametrize("src, role", [("human", "user"), ("gpt", "assistant"), ("system", "system"),
                                       ("observation", "tool"), ("function", "tool")])
def test_sharegpt_role_names(src, role):
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": src, "value": "x"},
                             {"from": "human", "value": "q2"}]}
    assert turns(norm(row))[1] == (role, "x")


def test_prompt_fields():
    prompt = norm({"query": "q"}, index=12)
    assert prompt.row == 12
    assert prompt.source == WHERE


# --- ground truth ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, expected", [
    ({"messages": msgs(("user", "q")), "solution": "s"}, "s"),
    ({"messages": msgs(("user", "q")), "answer": "7"}, "7"),
    ({"messages": msgs(("user", "q")), "response": "r"}, "r"),
    ({"problem": "p", "answer": "42"}, "42"),
    ({"problem": "p", "answer": 42}, "42"),                       # non-string column -> its JSON text
    ({"problem": "p", "answer": [1, 2]}, "[1, 2]"),
    ({"problem": "p", "solution": "s", "answer": "a"}, "s"),      # solution wins over answer
    ({"problem": "p", "solution": None, "answer": "a"}, "a"),     # a null column is skipped
])
def test_ground_truth_from_column(row, expected):
    assert norm(row).ground_truth == expected


def test_final_assistant_turn_wins_over_answer_column():
    row = {"messages": msgs(("user", "q"), ("assistant", "from-turn")), "solution": "from-column"}
    assert norm(row).ground_truth == "from-turn"


@pytest.mark.parametrize("row", [{"query": "What is 2+3?", "response": 5},
                                 {"instruction": "What is 2+3?", "output": 5}], ids=["query-response", "alpaca-output"])
def test_numeric_reference_answer_in_layout_column(row):
    assert norm(row).ground_truth == "5"


# --- extra columns ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row, extra", [
    ({"messages": msgs(("user", "q")), "level": 3, "tags": ["a"]}, {"level": 3, "tags": ["a"]}),
    ({"query": "q", "response": "a", "history": [], "system": "s", "src": "x"}, {"src": "x"}),
    ({"instruction": "i", "input": "", "output": "o", "src": "x"}, {"src": "x"}),
    ({"conversations": [{"from": "human", "value": "q"}], "src": "x"}, {"src": "x"}),
    ({"problem": "p", "solution": "s", "level": 3}, {"solution": "s", "level": 3}),
])
def test_other_columns_kept_in_extra(row, extra):
    assert norm(row).extra == extra


# --- --system -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row", [{"query": "q"}, {"messages": msgs(("user", "q"))}, {"problem": "q"},
                                 {"instruction": "q"}, {"conversations": [{"from": "human", "value": "q"}]}])
def test_system_inserted_when_row_has_none(row):
    assert turns(norm(row, system="SYS")) == [("system", "SYS"), ("user", "q")]


@pytest.mark.parametrize("row", [{"query": "q", "system": "own"},
                                 {"messages": msgs(("system", "own"), ("user", "q"))},
                                 {"conversations": [{"from": "system", "value": "own"},
                                                    {"from": "human", "value": "q"}]}])
def test_system_not_inserted_when_row_has_one(row):
    assert turns(norm(row, system="SYS")) == [("system", "own"), ("user", "q")]


# --- id -------------------------------------------------------------------------------------------------------

def _swift_id(row: dict) -> str:
    """The reference's formula (its get_messages_md5) on the row as its preprocessing leaves it."""
    return hashlib.md5(json.dumps(row, sort_keys=True).encode("utf-8")).hexdigest()


@pytest.mark.parametrize("row, swift_row", [
    ({"query": "q", "response": "a", "level": 3},
     {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "level": 3}),
    ({"query": "Wie viel ist 2+2? é", "system": "Sei kurz.", "history": [["hi", "hallo"]], "tags": ["x", 1]},
     {"messages": [{"role": "system", "content": "Sei kurz."}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "hallo"}, {"role": "user", "content": "Wie viel ist 2+2? é"}],
      "tags": ["x", 1]}),
    ({"messages": [{"role": "user", "content": "q"}], "solution": "42", "extra": {"b": 1, "a": None}},
     {"messages": [{"role": "user", "content": "q"}], "solution": "42", "extra": {"b": 1, "a": None}}),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "id_src": 7},
     {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id_src": 7}),
])
def test_id_is_the_references_md5_of_the_row_with_its_columns(row, swift_row):
    assert norm(row).id == _swift_id(swift_row)
    assert norm(row, system="SYS").id == norm(row).id  # --system is added after the id, as swift does


def test_id_is_stable_and_ignores_key_order_position_and_system():
    a = norm({"query": "q", "response": "a"}, index=0)
    b = norm({"response": "a", "query": "q"}, index=5, system="SYS")
    assert a.id == b.id


def test_id_differs_for_different_rows():
    assert norm({"query": "q"}).id != norm({"query": "q", "response": "a"}).id


# --- bad rows -------------------------------------------------------------------------------------------------

BAD_ROWS = [
    pytest.param(["not", "an", "object"], "JSON object", id="list-row"),
    pytest.param("text", "JSON object", id="string-row"),
    pytest.param(None, "JSON object", id="null-row"),
    pytest.param({"text": "q", "label": 1}, "no prompt found", id="no-recognised-column"),
    pytest.param({}, "no prompt found", id="empty-object"),
    pytest.param({"messages": []}, "non-empty list", id="messages-empty"),
    pytest.param({"messages": "q"}, "non-empty list", id="messages-not-list"),
    pytest.param({"messages": ["q"]}, "not an object", id="turn-not-object"),
    pytest.param({"messages": msgs(("assistant", "a"))}, "user turn", id="no-user-turn"),
    pytest.param({"messages": msgs(("system", "s"))}, "user turn", id="system-only"),
    pytest.param({"messages": msgs(("user", "q"), ("system", "s"))}, "user turn", id="ends-with-system"),
    pytest.param({"messages": msgs(("user", "   "))}, "user turn", id="blank-user-turn"),
    pytest.param({"query": ""}, "user turn", id="empty-query"),
    pytest.param({"problem": ""}, "user turn", id="empty-problem"),
    pytest.param({"messages": [{"role": "user", "content": ["x"]}]}, "must be a string", id="content-list"),
    pytest.param({"messages": [{"role": "user", "content": None}]}, "must be a string", id="content-null"),
    pytest.param({"messages": [{"role": "bot", "content": "x"}]}, "unknown role", id="unknown-role"),
    pytest.param({"messages": [{"content": "x"}]}, "unknown role", id="missing-role"),
    pytest.param({"conversations": [{"from": "alien", "value": "x"}]}, "unknown role", id="sharegpt-unknown-role"),
    pytest.param({"query": 5}, "must be a string", id="query-not-string"),
    pytest.param({"query": "q", "history": [["only-one"]]}, "history[0]", id="history-bad-pair"),
    pytest.param({"query": "q", "history": [["q", 1]]}, "history[0]", id="history-non-string"),
    pytest.param({"instruction": "i", "input": 3}, "must be a string", id="alpaca-input-not-string"),
]


@pytest.mark.parametrize("row, fragment", BAD_ROWS)
def test_bad_row_raises_data_error_naming_where(row, fragment):
    with pytest.raises(DataError) as err:
        norm(row)
    assert WHERE in str(err.value)
    assert fragment in str(err.value)
