"""course_lib.rag: passages, questions, chunks, prompts within their budget, the reader's data and scores."""

from __future__ import annotations

import random
import re

import pytest

from course_lib import rag
from course_lib.data import QUESTIONS, TEMPLATES, Fact, make_world
from course_lib.finetune import chat_prompt
from course_lib.models import load_pretrained
from course_lib.tokenizer import course_tokenizer


@pytest.fixture(scope="module")
def world():
    return make_world(0)


@pytest.fixture(scope="module")
def tokenizer():
    return course_tokenizer(0)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text))


# --------------------------------------------------------------------------- passages and questions


def sentence_of(fact: Fact, text: str) -> bool:
    """Does ``text`` state ``fact`` with one of its relation's templates?"""
    return any(t.format(s=fact.subject, o=fact.obj, a="an" if fact.obj[0] in "aeiou" else "a") in text
               for t in TEMPLATES[fact.relation])


def test_every_person_has_one_passage_with_all_their_facts(world):
    everyone = rag.passages(world)
    assert [p.person for p in everyone] == world.people + world.unseen_people
    assert len({p.id for p in everyone}) == len(everyone)
    for p in everyone:
        facts = world.facts_about(p.person)
        assert all(sentence_of(f, p.text) for f in facts), p
        assert len(rag.split_sentences(p.text)) == len(facts)
        assert p.id == p.person.lower().replace(" ", "-")


def test_passages_are_stable_and_do_not_depend_on_who_else_is_asked_for(world):
    some = world.unseen_people[3:6]
    assert rag.passages(world, some) == rag.passages(make_world(0), some)
    assert rag.passages(world, some) == [p for p in rag.passages(world) if p.person in some]
    assert rag.passages(world, []) == []


def test_passages_use_more_than_one_template(world):
    first_template = {r: ts[0].split("{s}")[-1].split("{")[0] for r, ts in TEMPLATES.items()}
    texts = " ".join(p.text for p in rag.passages(world, world.unseen_people))
    assert sum(texts.count(piece) for piece in first_template.values()) < len(world.unseen_facts)


def test_passages_reject_people_of_no_world(world):
    with pytest.raises(ValueError, match="people of the world"):
        rag.passages(world, ["Nobody Atall"])
    with pytest.raises(ValueError, match="letters"):
        rag.passage_id("Zorbin  Kalu")
    with pytest.raises(ValueError, match="subject"):
        rag.write_passage("Nobody Atall", world.facts_about(world.people[0]))
    with pytest.raises(ValueError, match="non-empty"):
        rag.write_passage(world.people[0], [])


def test_questions_ask_about_every_fact_and_name_the_gold_passage(world):
    people = world.unseen_people
    items = rag.questions(world, people)
    assert len(items) == len(world.unseen_facts)
    by_id = {p.id: p for p in rag.passages(world, people)}
    for (question, answer, gold_id), fact in zip(items, world.unseen_facts):
        assert question == QUESTIONS[fact.relation].format(s=fact.subject)
        assert answer == fact.obj
        assert by_id[gold_id].person == fact.subject
        assert sentence_of(fact, by_id[gold_id].text)


def test_questions_reject_unknown_people(world):
    with pytest.raises(ValueError, match="world.people"):
        rag.questions(world, ["Nobody Atall"])
    with pytest.raises(ValueError, match="list of names"):
        rag.questions(world, world.people[0])


# --------------------------------------------------------------------------- chunks


def test_chunk_words_by_hand():
    text = "a b c d e f g"
    assert rag.chunk_words(text, 3) == ["a b c", "d e f", "g"]
    assert rag.chunk_words(text, 3, 1) == ["a b c", "c d e", "e f g"]
    assert rag.chunk_words(text, 4, 2) == ["a b c d", "c d e f", "e f g"]
    assert rag.chunk_words(text, 7, 3) == [text]
    assert rag.chunk_words(text, 100) == [text]
    assert rag.chunk_words("  a\n b  ", 1) == ["a", "b"]
    assert rag.chunk_words("", 3) == [] and rag.chunk_words("   ", 3, 2) == []


@pytest.mark.parametrize("size,overlap", [(1, 0), (2, 1), (5, 0), (5, 2), (5, 4), (8, 3)])
def test_chunk_words_overlap_and_cover_every_word(size, overlap):
    words = [f"w{i}" for i in range(23)]
    pieces = [p.split() for p in rag.chunk_words(" ".join(words), size, overlap)]
    step = size - overlap
    for i, piece in enumerate(pieces):
        assert piece == words[i * step : i * step + size]
    for a, b in zip(pieces, pieces[1:]):
        assert a[-overlap:] == b[:overlap] if overlap else a[-1] != b[0]
    assert pieces[-1][-1] == words[-1]
    assert len(pieces) == 1 or len(pieces[-2]) == size and pieces[-2][-1] != words[-1]


@pytest.mark.parametrize("size,overlap,match", [(0, 0, "size"), (-1, 0, "size"), (2.0, 0, "size"), (True, 0, "size"),
                                                (3, 3, "overlap"), (3, 4, "overlap"), (3, -1, "overlap"),
                                                (3, 1.0, "overlap")])
def test_chunk_words_rejects_bad_sizes(size, overlap, match):
    with pytest.raises(ValueError, match=match):
        rag.chunk_words("a b c d", size, overlap)


def test_chunk_sentences_packs_whole_sentences():
    text = "One two three. Four five. Six seven eight nine ten eleven. Twelve."
    assert rag.split_sentences(text) == ["One two three.", "Four five.", "Six seven eight nine ten eleven.", "Twelve."]
    assert rag.chunk_sentences(text, 5) == ["One two three. Four five.", "Six seven eight nine ten eleven.", "Twelve."]
    assert rag.chunk_sentences(text, 1) == rag.split_sentences(text)
    assert rag.chunk_sentences(text, 100) == [text]
    assert rag.chunk_sentences(text, 6) == ["One two three. Four five.", "Six seven eight nine ten eleven.", "Twelve."]
    assert rag.chunk_sentences(text, 7) == ["One two three. Four five.", "Six seven eight nine ten eleven. Twelve."]
    assert rag.chunk_sentences("", 4) == []
    assert rag.chunk_sentences("Is it? Yes! Good.", 2) == ["Is it?", "Yes! Good."]


def test_chunk_sentences_keep_order_and_budget(world):
    for passage in rag.passages(world, world.unseen_people):
        for max_words in (1, 6, 11, 20, 200):
            pieces = rag.chunk_sentences(passage.text, max_words)
            assert " ".join(pieces) == passage.text
            for piece in pieces:
                assert len(piece.split()) <= max_words or len(rag.split_sentences(piece)) == 1


@pytest.mark.parametrize("max_words", [0, -3, 2.5, False])
def test_chunk_sentences_rejects_bad_budgets(max_words):
    with pytest.raises(ValueError, match="max_words"):
        rag.chunk_sentences("A b. C d.", max_words)


def test_chunk_passages_number_the_chunks_of_each_passage(world):
    ps = rag.passages(world, world.unseen_people[:3])
    chunks = rag.chunk_passages(ps, lambda text: rag.chunk_words(text, 10, 3))
    for p in ps:
        mine = [c for c in chunks if c.passage_id == p.id]
        assert [c.id for c in mine] == [f"{p.id}#{i}" for i in range(len(mine))]
        assert [c.text for c in mine] == rag.chunk_words(p.text, 10, 3)
    assert len({c.id for c in chunks}) == len(chunks)
    with pytest.raises(ValueError, match="Passage"):
        rag.chunk_passages(["just a string"], lambda text: [text])


def test_each_question_names_the_one_sentence_chunk_that_answers_it(world):
    ps = rag.passages(world, world.unseen_people)
    chunks = rag.chunk_passages(ps, lambda text: rag.chunk_sentences(text, 1))
    text_of = {c.id: c.text for c in chunks}
    for (question, answer, gold_id), fact in zip(rag.questions(world, world.unseen_people), world.unseen_facts):
        (gold,) = rag.gold_chunk_ids(chunks, gold_id, answer)
        assert gold.startswith(gold_id + "#")
        assert sentence_of(fact, text_of[gold])


def test_gold_chunk_ids_match_whole_words_of_the_gold_passage_only():
    chunks = [rag.Chunk("a#0", "a", "Zo owns a goldfish."), rag.Chunk("a#1", "a", "Zo likes gold."),
              rag.Chunk("b#0", "b", "Ka likes gold."), rag.Chunk("a#2", "a", "Born in 1972.")]
    assert rag.gold_chunk_ids(chunks, "a", "gold") == ["a#1"]
    assert rag.gold_chunk_ids(chunks, "b", "gold") == ["b#0"]
    assert rag.gold_chunk_ids(chunks, "a", "197") == []
    assert rag.gold_chunk_ids(chunks, "a", "1972") == ["a#2"]
    with pytest.raises(ValueError, match="answer"):
        rag.gold_chunk_ids(chunks, "a", " ")


def test_overlapping_word_chunks_can_split_a_sentence_but_some_chunk_holds_each_answer(world):
    ps = rag.passages(world, world.unseen_people)
    chunks = rag.chunk_passages(ps, lambda text: rag.chunk_words(text, 6, 2))
    for _, answer, gold_id in rag.questions(world, world.unseen_people):
        assert rag.gold_chunk_ids(chunks, gold_id, answer)


# --------------------------------------------------------------------------- prompts


def test_the_prompt_format(tokenizer):
    assert rag.reader_instruction([], "Q?") == "Context:\nQuestion: Q?"
    assert rag.reader_instruction(["A b.", "C d."], "Q?") == "Context:\nA b.\nC d.\nQuestion: Q?"
    prompt = rag.build_prompt(tokenizer, ["A b.", "C d."], "Q?", 100)
    assert prompt == "Instruction: Context:\nA b.\nC d.\nQuestion: Q?\nResponse:"
    assert prompt == chat_prompt(rag.reader_instruction(["A b.", "C d."], "Q?"))
    with pytest.raises(ValueError, match="list of str"):
        rag.reader_instruction("A b.", "Q?")


def test_the_prompt_never_exceeds_its_budget_and_keeps_whole_passages_in_rank_order(world, tokenizer):
    texts = [p.text for p in rag.passages(world, world.unseen_people)]
    question = rag.questions(world, world.unseen_people[:1])[0][0]
    alone = n_tokens(tokenizer, rag.build_prompt(tokenizer, [], question, 1000))
    rng = random.Random(0)
    kept_counts = set()
    for max_tokens in list(range(alone, 700, 7)) + [alone + rng.randrange(600) for _ in range(20)]:
        ranked = rng.sample(texts, 6)
        prompt = rag.build_prompt(tokenizer, ranked, question, max_tokens)
        assert n_tokens(tokenizer, prompt) <= max_tokens
        kept = rag.fit_passages(tokenizer, ranked, question, max_tokens)
        assert kept == ranked[: len(kept)]
        assert prompt == chat_prompt(rag.reader_instruction(kept, question))
        if len(kept) < len(ranked):  # the next passage would not have fit whole
            assert n_tokens(tokenizer, chat_prompt(rag.reader_instruction(ranked[: len(kept) + 1], question))) > max_tokens
        kept_counts.add(len(kept))
    assert kept_counts == set(range(7))


def test_a_passage_that_does_not_fit_is_left_out_not_cut(tokenizer):
    short, long = "Ab is here.", "Cd is there. " * 30
    budget = n_tokens(tokenizer, rag.build_prompt(tokenizer, [short], "Q?", 1000)) + 5
    prompt = rag.build_prompt(tokenizer, [short, long, short], "Q?", budget)
    assert "Cd" not in prompt and prompt.count("Ab is here.") == 1
    assert rag.build_prompt(tokenizer, [long, short], "Q?", budget) == rag.build_prompt(tokenizer, [], "Q?", budget)


def test_build_prompt_rejects_a_budget_the_question_alone_exceeds(tokenizer):
    need = n_tokens(tokenizer, rag.build_prompt(tokenizer, [], "Where is it?", 1000))
    assert rag.build_prompt(tokenizer, [], "Where is it?", need)
    with pytest.raises(ValueError, match=f"at least {need}"):
        rag.build_prompt(tokenizer, ["A b."], "Where is it?", need - 1)
    with pytest.raises(ValueError, match="int"):
        rag.build_prompt(tokenizer, [], "Where is it?", 100.0)


def test_with_distractors_keeps_the_gold_passage_and_fits(world, tokenizer):
    texts = [p.text for p in rag.passages(world, world.people[:40])]
    rng = random.Random(1)
    orders = set()
    for i in range(30):
        gold, others = texts[i], texts[i + 1 : i + 4]
        budget = rng.choice([120, 180, 240, 400])
        context = rag.with_distractors(tokenizer, gold, others, "Q?", rng, budget)
        assert gold in context and set(context) <= {gold, *others}
        assert n_tokens(tokenizer, rag.build_prompt(tokenizer, context, "Q?", 10_000)) <= budget
        assert rag.fit_passages(tokenizer, context, "Q?", budget) == context
        orders.add(context.index(gold))
    assert len(orders) > 1
    with pytest.raises(ValueError, match="gold passage alone"):
        rag.with_distractors(tokenizer, texts[0], texts[1:3], "Q?", rng, 20)


# --------------------------------------------------------------------------- the reader's training data


def test_reader_examples_hold_the_gold_passage_and_fit_the_budget(world, tokenizer):
    people = world.people[:50]
    pairs = rag.reader_examples(tokenizer, world, people, 300, seed=3, no_context=0.2, counterfactual=0.3)
    assert pairs == rag.reader_examples(tokenizer, world, people, 300, seed=3, no_context=0.2, counterfactual=0.3)
    assert pairs != rag.reader_examples(tokenizer, world, people, 300, seed=4, no_context=0.2, counterfactual=0.3)
    texts = {p.person: p.text for p in rag.passages(world, people)}
    empty = changed = 0
    n_passages = set()
    for instruction, answer in pairs:
        assert n_tokens(tokenizer, chat_prompt(instruction)) <= rag.MAX_PROMPT_TOKENS
        lines = instruction.split("\n")
        assert lines[0] == "Context:" and lines[-1].startswith("Question: ")
        (person,) = [p for p in people if p in lines[-1]]
        context = lines[1:-1]
        n_passages.add(len(context))
        facts = world.facts_about(person)
        (relation,) = [f.relation for f in facts if QUESTIONS[f.relation].format(s=person) == lines[-1][10:]]
        true = [f.obj for f in facts if f.relation == relation][0]
        if not context:
            empty += 1
            assert answer == true
            continue
        assert all(c in texts.values() or c.startswith(person) or person in c for c in context)
        if answer == true:
            assert texts[person] in context
        else:
            changed += 1
            assert texts[person] not in context
            (gold,) = [c for c in context if person in c]
            assert sentence_of(Fact(person, relation, answer), gold)
            assert not sentence_of(Fact(person, relation, true), gold)
    assert 30 < empty < 90 and 40 < changed < 110
    assert {0, 1, 2, 3} <= n_passages <= {0, 1, 2, 3, 4}  # 240 tokens hold the gold passage and two or three others


def test_reader_examples_without_empty_or_changed_contexts(world, tokenizer):
    people = world.people[:10]
    facts = {(QUESTIONS[f.relation].format(s=f.subject), f.obj) for p in people for f in world.facts_about(p)}
    for instruction, answer in rag.reader_examples(tokenizer, world, people, 50, no_context=0, counterfactual=0):
        assert instruction.split("\n")[1] != instruction.split("\n")[-1]
        assert (instruction.split("\n")[-1].removeprefix("Question: "), answer) in facts
    for instruction, _ in rag.reader_examples(tokenizer, world, people, 20, no_context=1.0):
        assert instruction.startswith("Context:\nQuestion: ")


def test_reader_examples_reject_bad_settings(world, tokenizer):
    with pytest.raises(ValueError, match="probabilities"):
        rag.reader_examples(tokenizer, world, world.people, 5, no_context=1.5)
    with pytest.raises(ValueError, match="probabilities"):
        rag.reader_examples(tokenizer, world, world.people, 5, counterfactual=-0.1)
    with pytest.raises(ValueError, match="max_distractors"):
        rag.reader_examples(tokenizer, world, world.people[:3], 5, max_distractors=3)


def test_distractor_contexts_hide_the_gold_passage_among_others(world, tokenizer):
    pool = world.unseen_people
    items = rag.questions(world, pool)
    contexts = rag.distractor_contexts(tokenizer, world, items, pool, k=3, seed=0)
    assert contexts == rag.distractor_contexts(tokenizer, world, items, pool, k=3, seed=0)
    by_id = {p.id: p.text for p in rag.passages(world, pool)}
    positions = set()
    for (question, _, gold_id), context in zip(items, contexts):
        assert by_id[gold_id] in context and 1 <= len(context) <= 4
        assert len(set(context)) == len(context) and set(context) <= set(by_id.values())
        assert rag.fit_passages(tokenizer, context, question, rag.MAX_PROMPT_TOKENS) == context
        positions.add(context.index(by_id[gold_id]))
    assert {0, 1, 2} <= positions <= {0, 1, 2, 3}  # the gold passage first, second or third (a fourth rarely fits)
    with pytest.raises(ValueError, match="pool"):
        rag.distractor_contexts(tokenizer, world, items[:1], world.unseen_people[1:], k=2)


# --------------------------------------------------------------------------- measuring


def test_reader_accuracy_counts_the_answers_of_reader_answers(world, tokenizer):
    model = load_pretrained("course-lm-small")
    items = rag.questions(world, world.unseen_people[:1])[:3]
    contexts = [[p.text] for p in rag.passages(world, world.unseen_people[:1])] * 3
    got = rag.reader_answers(model, tokenizer, items, contexts, max_new_tokens=4)
    assert len(got) == 3 and all(isinstance(g, str) for g in got)
    # pretend the model's answers were right for the first two questions
    rigged = [(q, got[i] if i < 2 else got[i] + "!", g) for i, (q, _, g) in enumerate(items)]
    result = rag.reader_accuracy(model, tokenizer, rigged, contexts)
    answers = rag.reader_answers(model, tokenizer, rigged, contexts)
    assert result["per_question"] == [int(a == r[1]) for a, r in zip(answers, rigged)]
    assert result["correct"] == sum(result["per_question"]) and result["total"] == 3
    assert result["exact_match"] == result["correct"] / 3
    assert rag.reader_answers(model, tokenizer, items, None, max_new_tokens=3) == \
        rag.reader_answers(model, tokenizer, items, [[], [], []], max_new_tokens=3)
    with pytest.raises(ValueError, match="one list of passages per item"):
        rag.reader_answers(model, tokenizer, items, contexts[:2])
    with pytest.raises(ValueError, match="at least one"):
        rag.reader_accuracy(model, tokenizer, [], [])


# --------------------------------------------------------------------------- data newer than the model


def test_moved_facts_move_everyone_to_another_city(world):
    moved = rag.moved_facts(world, world.people, seed=0)
    assert moved == rag.moved_facts(world, world.people, seed=0) != rag.moved_facts(world, world.people, seed=1)
    assert len({new.obj for _, new in moved}) > 20
    for person, (old, new) in zip(world.people, moved):
        assert old in world.facts and old.subject == new.subject == person
        assert old.relation == new.relation == "lives_in"
        assert new.obj != old.obj and new.obj in world.cities
    with pytest.raises(ValueError, match="lives_in"):
        rag.moved_facts(world, [world.cities[0]])


def test_updated_passage_states_the_new_fact_instead_of_the_old(world):
    old, new = rag.moved_facts(world, world.people[:1])[0]
    passage = rag.updated_passage(world, old, new)
    before = rag.passages(world, [old.subject])[0]
    assert passage.id == before.id and passage.person == before.person
    assert sentence_of(new, passage.text) and not sentence_of(old, passage.text)
    assert passage.text.replace(new.obj, old.obj) == before.text
    with pytest.raises(ValueError, match="old must be a fact"):
        rag.updated_passage(world, new, old)
    with pytest.raises(ValueError, match="same subject"):
        rag.updated_passage(world, old, Fact(old.subject, "works_as", "baker"))


def test_load_reader_names_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        rag.load_reader(tmp_path)
