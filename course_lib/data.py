"""A small synthetic world and the texts the course trains its models on (lesson 02).

No downloads: every text of the course comes from this seeded generator, so every result
is reproducible and its quality is measurable (we know every true fact and every right answer).

The world (:func:`make_world`)
    About 200 people with invented names ("Zorbin Kalu"), invented cities in invented
    countries, and facts about them written with real words: where a person lives, what
    they work as, when they were born, their favourite colour, maybe a pet and a favourite
    food. A :class:`Fact` is a ``(subject, relation, obj)`` triple; :func:`fact_sentence`
    writes it as English with one of several paraphrase templates, and
    :func:`question_answer` as a question and its answer.

The corpus (:func:`build_corpus`)
    ``train_texts``, the pre-training documents (about 0.7 MB of ASCII text, 13,000 documents):

    - biographies: a person's facts in a random order, each with a random template,
      several different biographies per person;
    - one-sentence documents about cities, every paraphrase ("Quenta is a city in Valoria.");
    - question-answer lines ("Question: Where does Zorbin Kalu live? Answer: Quenta.")
      about most people (and every city), but *not* about the held-out people;
    - arithmetic ("12 + 7 = 19", "43 - 18 = 25") and sorting ("sort: 5 3 9 1 -> 1 3 5 9").

    and held-out data that never appears in ``train_texts``:

    - ``heldout_texts``: a new biography of every person (different from all training
      ones), and the held-out sums and sorting lines, to measure perplexity;
    - ``qa_heldout``: questions about the held-out people, whose biographies *are* in the
      training text (can a model answer questions about facts it read but was never quizzed on?);
    - ``arithmetic_heldout``, ``sorting_heldout``: problems not in the training text;
    - ``unseen_facts``: facts about extra people who appear nowhere in any training text
      (lesson 11 retrieves them).

    Two more tasks for the other model types of lesson 02:

    - translation (encoder-decoder): English sentences into an invented language with a
      fixed dictionary (:data:`TRANSLATION_DICTIONARY`) and a reordering rule
      (:func:`translate`);
    - classification (encoder-only): which relation does a sentence state?

Every prompt/answer pair is split so that ``prompt + answer`` is exactly the line a model
reads in training, and the answer starts with a space: ``("12 + 7 =", " 19")``.

Reproducibility: only ``random.Random`` is used, seeded with strings such as ``"0/world"``
(Python hashes a string seed with SHA-512, so it gives the same numbers on every machine and
whatever ``PYTHONHASHSEED`` is), and only its ``random``, ``randrange``, ``choice`` and
``shuffle`` methods, whose results have not changed across Python 3 versions. Nothing
iterates over a set. The same seed therefore gives byte-identical text everywhere.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = [
    "RELATIONS", "TEMPLATES", "QUESTIONS", "TRANSLATION_DICTIONARY",
    "Fact", "World", "Corpus",
    "make_world", "fact_sentence", "question_answer", "biography", "translate",
    "build_corpus", "corpus_text",
]

# --------------------------------------------------------------------------- real words

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink", "brown", "gold")
ANIMALS = ("dog", "cat", "parrot", "rabbit", "horse", "goat", "turtle", "hamster", "owl", "snake", "goldfish", "pony", "lizard", "duck")
PROFESSIONS = (
    "baker", "teacher", "doctor", "farmer", "painter", "engineer", "nurse", "pilot", "carpenter", "lawyer",
    "musician", "fisher", "tailor", "librarian", "architect", "chemist", "gardener", "journalist", "actor", "sailor",
)
FOODS = (
    "bread", "rice", "apples", "cheese", "soup", "noodles", "honey", "figs", "olives", "pancakes", "beans", "plums", "dumplings", "pears",
)

# --------------------------------------------------------------------------- relations

#: Paraphrase templates for each relation: ``{s}`` is the subject, ``{o}`` the object and
#: ``{a}`` the article ("a" or "an") that goes before the object.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "lives_in": (
        "{s} lives in {o}.",
        "{s}'s home is in {o}.",
        "{s} has a house in {o}.",
        "The home of {s} is in {o}.",
    ),
    "works_as": (
        "{s} works as {a} {o}.",
        "{s} is {a} {o} by profession.",
        "By trade, {s} is {a} {o}.",
        "{s} earns a living as {a} {o}.",
    ),
    "born_in": (
        "{s} was born in {o}.",
        "{s} came into the world in {o}.",
        "The birth year of {s} is {o}.",
        "{s} was born in the year {o}.",
    ),
    "favourite_colour": (
        "{s}'s favourite colour is {o}.",
        "The colour {s} likes best is {o}.",
        "{s} loves the colour {o}.",
        "Of all colours, {s} prefers {o}.",
    ),
    "owns_pet": (
        "{s} owns {a} {o}.",
        "{s} has a pet {o}.",
        "{s} keeps {a} {o} at home.",
        "The pet of {s} is {a} {o}.",
    ),
    "favourite_food": (
        "{s}'s favourite food is {o}.",
        "{s} likes to eat {o}.",
        "For dinner, {s} prefers {o}.",
        "The food {s} enjoys most is {o}.",
    ),
    "in_country": (
        "{s} is a city in {o}.",
        "The city of {s} lies in {o}.",
        "{s} is located in {o}.",
        "{s} belongs to the country of {o}.",
    ),
}

#: One question per relation; the answer is the object.
QUESTIONS: dict[str, str] = {
    "lives_in": "Where does {s} live?",
    "works_as": "What is {s}'s profession?",
    "born_in": "In which year was {s} born?",
    "favourite_colour": "What is {s}'s favourite colour?",
    "owns_pet": "Which pet does {s} own?",
    "favourite_food": "What is {s}'s favourite food?",
    "in_country": "In which country is {s}?",
}

#: The relations, in a fixed order; also the label names of the classification task.
RELATIONS: tuple[str, ...] = tuple(TEMPLATES)

# --------------------------------------------------------------------------- the translation task

#: English word -> word of the invented language. Defined in lesson 02.
TRANSLATION_DICTIONARY: dict[str, str] = {
    # determiners
    "the": "lo", "a": "na",
    # nouns
    "dog": "vasku", "cat": "miro", "bird": "pelit", "horse": "gando", "fish": "sulo", "farmer": "bakren",
    "child": "tilu", "teacher": "morvek", "king": "raskan", "baker": "fendo", "fox": "kivri", "sailor": "dumasi",
    # adjectives
    "big": "gor", "small": "pim", "red": "rusa", "green": "vendi", "tall": "stari", "young": "lemo",
    "happy": "joli", "quiet": "sesti",
    # verbs
    "sees": "vidat", "likes": "amat", "follows": "sekat", "helps": "jutat", "finds": "trovat", "feeds": "nurat",
    "calls": "klamat", "watches": "tenat",
}
DETERMINERS = ("the", "a")
NOUNS = ("dog", "cat", "bird", "horse", "fish", "farmer", "child", "teacher", "king", "baker", "fox", "sailor")
ADJECTIVES = ("big", "small", "red", "green", "tall", "young", "happy", "quiet")
VERBS = ("sees", "likes", "follows", "helps", "finds", "feeds", "calls", "watches")

# --------------------------------------------------------------------------- sizes

N_PEOPLE = 200            # people whose facts are in the training text
N_UNSEEN_PEOPLE = 20      # people whose facts appear in no training text (lesson 11)
N_COUNTRIES = 8
CITIES_PER_COUNTRY = 4
HELDOUT_PEOPLE_FRACTION = 0.2   # people whose questions are held out
BIOGRAPHIES_PER_PERSON = 12     # training biographies per person (different orders and templates)
N_ARITHMETIC = (6000, 1000)     # (train, held out)
N_SORTING = (4000, 500)
N_TRANSLATION = (4000, 500)
CLASSIFICATION_TEMPLATES_PER_FACT = 2


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Fact:
    """One fact of the world: ``Fact("Zorbin Kalu", "lives_in", "Quenta")``.

    ``relation`` is one of :data:`RELATIONS`; ``obj`` is always a string (a year too: ``"1987"``).
    Defined in lesson 02.
    """

    subject: str
    relation: str
    obj: str


@dataclass(frozen=True, repr=False)
class World:
    """The entities of the synthetic world and every fact about them. Defined in lesson 02.

    Attributes:
        people: full names of the people whose facts the training text contains.
        unseen_people: full names of extra people who appear in no training text.
        countries: invented country names.
        cities: invented city names; ``city_country[city]`` is its country.
        facts: the facts about ``people`` (in the order of ``people``), then one
            ``in_country`` fact per city.
        unseen_facts: the facts about ``unseen_people``.
    """

    people: list[str]
    unseen_people: list[str]
    countries: list[str]
    cities: list[str]
    city_country: dict[str, str]
    facts: list[Fact]
    unseen_facts: list[Fact]

    def __repr__(self) -> str:
        return (f"World({len(self.people)} people, {len(self.unseen_people)} unseen people, {len(self.cities)} cities, "
                f"{len(self.countries)} countries, {len(self.facts)} facts, {len(self.unseen_facts)} unseen facts)")

    def facts_about(self, subject: str) -> list[Fact]:
        """Every fact (seen or unseen) whose subject is ``subject``, in a fixed order."""
        return [f for f in self.facts + self.unseen_facts if f.subject == subject]


@dataclass(frozen=True, repr=False)
class Corpus:
    """Everything the course trains and evaluates on. Defined in lesson 02.

    Texts and pairs (``prompt + answer`` is the full line; answers start with a space):

    - ``train_texts``: the pre-training documents, shuffled.
    - ``heldout_texts``: documents of the same kinds that are not in ``train_texts``
      (a new biography of every person, the held-out sums and sorting lines; no questions).
    - ``qa_train`` / ``qa_heldout``: ``(prompt, answer)`` such as
      ``("Question: Where does Zorbin Kalu live? Answer:", " Quenta.")``. ``qa_train`` is in
      ``train_texts``; ``qa_heldout`` asks about ``heldout_people``, whose biographies are in
      ``train_texts`` but whose questions are not.
    - ``arithmetic_train`` / ``arithmetic_heldout``: ``("12 + 7 =", " 19")``.
    - ``sorting_train`` / ``sorting_heldout``: ``("sort: 5 3 9 1 ->", " 1 3 5 9")``.
    - ``translation_train`` / ``translation_heldout``: ``(english, invented)``; not part of
      ``train_texts``.
    - ``classification_train`` / ``classification_heldout``: ``(sentence, label_id)`` where
      ``label_names[label_id]`` is the relation the sentence states; the held-out sentences
      are about other people and cities than the training ones.
    - ``unseen_facts``: facts that appear in no training text.
    """

    train_texts: list[str]
    heldout_texts: list[str]
    qa_train: list[tuple[str, str]]
    qa_heldout: list[tuple[str, str]]
    heldout_people: list[str]
    arithmetic_train: list[tuple[str, str]]
    arithmetic_heldout: list[tuple[str, str]]
    sorting_train: list[tuple[str, str]]
    sorting_heldout: list[tuple[str, str]]
    translation_train: list[tuple[str, str]]
    translation_heldout: list[tuple[str, str]]
    classification_train: list[tuple[str, int]]
    classification_heldout: list[tuple[str, int]]
    label_names: list[str]
    unseen_facts: list[Fact]
    world: World

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(getattr(self, name))}" for name in self.__dataclass_fields__ if name != "world")
        return f"Corpus({sizes}, train bytes={len(corpus_text(self, 'train'))}, world={self.world!r})"


# --------------------------------------------------------------------------- helpers


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _rng(seed: int, purpose: str) -> random.Random:
    """A generator of its own for each purpose, so that changing one part leaves the others alone."""
    return random.Random(f"{seed}/{purpose}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------- the world

ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "m")
COUNTRY_ENDINGS = ("nia", "ria", "lia", "dor", "mar", "stan")

# Every English word of the course; invented names must differ from all of them.
_ENGLISH = {
    w.lower()
    for text in [*COLOURS, *ANIMALS, *PROFESSIONS, *FOODS, *TRANSLATION_DICTIONARY, *TRANSLATION_DICTIONARY.values(),
                 *(t for ts in TEMPLATES.values() for t in ts), *QUESTIONS.values(), "Question Answer sort"]
    for w in re.findall(r"[A-Za-z]+", text)
}


def _invented_word(rng: random.Random, n_syllables: int, endings: tuple[str, ...] = CODAS) -> str:
    """A pronounceable invented word such as "Kalu" or "Zobin": syllables of onset + vowel, then an ending."""
    syllables = [rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(n_syllables)]
    return ("".join(syllables) + rng.choice(endings)).capitalize()


def _invented_words(
    rng: random.Random, count: int, n_syllables: tuple[int, int], taken: set[str], endings: tuple[str, ...] = CODAS
) -> list[str]:
    """``count`` distinct invented words, none of them in ``taken`` (which is updated)."""
    words = []
    while len(words) < count:
        word = _invented_word(rng, rng.randrange(n_syllables[0], n_syllables[1] + 1), endings)
        if word.lower() not in taken:
            taken.add(word.lower())
            words.append(word)
    return words


def _person_facts(rng: random.Random, name: str, cities: list[str]) -> list[Fact]:
    """Four facts everyone has, and a pet and a favourite food for about half of the people each."""
    facts = [
        Fact(name, "lives_in", rng.choice(cities)),
        Fact(name, "works_as", rng.choice(PROFESSIONS)),
        Fact(name, "born_in", str(rng.randrange(1940, 2006))),
        Fact(name, "favourite_colour", rng.choice(COLOURS)),
    ]
    if rng.random() < 0.5:
        facts.append(Fact(name, "owns_pet", rng.choice(ANIMALS)))
    if rng.random() < 0.5:
        facts.append(Fact(name, "favourite_food", rng.choice(FOODS)))
    return facts


def make_world(seed: int = 0) -> World:
    """Invent the people, cities and countries of the world, and every fact about them.

    Every first name, last name, city and country is a different invented word, none of
    them an English word of the course. So each name word belongs to one entity, and the
    first and last names of the unseen people appear in no training text.

    Args:
        seed: a non-negative int; the same seed gives the same world on every machine.
    Returns:
        a :class:`World` with ``N_PEOPLE`` people, ``N_UNSEEN_PEOPLE`` unseen people,
        ``N_COUNTRIES`` countries and ``N_COUNTRIES * CITIES_PER_COUNTRY`` cities.

    Defined in lesson 02.
    """
    _check_seed(seed)
    rng = _rng(seed, "world")
    taken = set(_ENGLISH)
    countries = _invented_words(rng, N_COUNTRIES, (2, 2), taken, endings=COUNTRY_ENDINGS)
    cities = _invented_words(rng, N_COUNTRIES * CITIES_PER_COUNTRY, (2, 3), taken)
    city_country = {city: countries[i // CITIES_PER_COUNTRY] for i, city in enumerate(cities)}
    n = N_PEOPLE + N_UNSEEN_PEOPLE
    first_names = _invented_words(rng, n, (2, 2), taken)
    last_names = _invented_words(rng, n, (2, 3), taken)
    names = [f"{first} {last}" for first, last in zip(first_names, last_names)]
    facts = [fact for name in names for fact in _person_facts(rng, name, cities)]
    people, unseen_people = names[:N_PEOPLE], names[N_PEOPLE:]
    seen = set(people)
    return World(
        people=people,
        unseen_people=unseen_people,
        countries=countries,
        cities=cities,
        city_country=city_country,
        facts=[f for f in facts if f.subject in seen] + [Fact(c, "in_country", city_country[c]) for c in cities],
        unseen_facts=[f for f in facts if f.subject not in seen],
    )


# --------------------------------------------------------------------------- facts as text


def _check_fact(fact) -> None:
    if not isinstance(fact, Fact):
        raise ValueError(f"fact must be a Fact(subject, relation, obj), got {type(fact).__name__}")
    if fact.relation not in TEMPLATES:
        raise ValueError(f"fact.relation must be one of {RELATIONS}, got {fact.relation!r}")


def fact_sentence(fact: Fact, template_index: int = 0) -> str:
    """Write ``fact`` as an English sentence with template number ``template_index``.

    ``fact_sentence(Fact("Zorbin Kalu", "lives_in", "Quenta"), 1) == "Zorbin Kalu's home is in Quenta."``
    ``template_index`` must be in ``range(len(TEMPLATES[fact.relation]))``. Defined in lesson 02.
    """
    _check_fact(fact)
    templates = TEMPLATES[fact.relation]
    if isinstance(template_index, bool) or not isinstance(template_index, int) or not 0 <= template_index < len(templates):
        raise ValueError(f"template_index must be an int in [0, {len(templates) - 1}] for {fact.relation!r}, got {template_index!r}")
    return templates[template_index].format(s=fact.subject, o=fact.obj, a=_article(fact.obj))


def question_answer(fact: Fact) -> tuple[str, str]:
    """The question about ``fact`` as a ``(prompt, answer)`` pair of strings.

    ``("Question: Where does Zorbin Kalu live? Answer:", " Quenta.")``; their concatenation is
    the line that training text contains. Defined in lesson 02.
    """
    _check_fact(fact)
    return f"Question: {QUESTIONS[fact.relation].format(s=fact.subject)} Answer:", f" {fact.obj}."


def biography(facts: list[Fact], rng: random.Random) -> str:
    """One document: ``facts`` in a random order, each written with a random template. Defined in lesson 02."""
    order = list(facts)
    rng.shuffle(order)
    return " ".join(fact_sentence(f, rng.randrange(len(TEMPLATES[f.relation]))) for f in order)


# --------------------------------------------------------------------------- algorithmic tasks


def _arithmetic_problems() -> list[tuple[str, str]]:
    """Every sum ``a + b`` and difference ``a - b >= 0`` of numbers from 0 to 99, in a fixed order."""
    problems = []
    for a in range(100):
        for b in range(100):
            problems.append((f"{a} + {b} =", f" {a + b}"))
            if a >= b:
                problems.append((f"{a} - {b} =", f" {a - b}"))
    return problems


def _sorting_problem(rng: random.Random) -> tuple[str, str]:
    """Three to seven digits (repeats allowed) and the same digits in increasing order."""
    digits = [rng.randrange(10) for _ in range(rng.randrange(3, 8))]
    return "sort: " + " ".join(map(str, digits)) + " ->", " " + " ".join(map(str, sorted(digits)))


def _english_sentence(rng: random.Random) -> str:
    """``determiner [adjective] noun verb determiner [adjective] noun``, e.g. "the big dog sees a red cat"."""
    def noun_phrase() -> list[str]:
        adjective = [rng.choice(ADJECTIVES)] if rng.random() < 0.5 else []
        return [rng.choice(DETERMINERS), *adjective, rng.choice(NOUNS)]

    return " ".join(noun_phrase() + [rng.choice(VERBS)] + noun_phrase())


def translate(sentence: str) -> str:
    """Translate an English sentence of the translation task into the invented language.

    Two rules: each word is replaced by its entry in :data:`TRANSLATION_DICTIONARY`, and
    the order changes: the verb moves to the end (subject-verb-object becomes
    subject-object-verb) and an adjective follows its noun::

        "the big dog sees a red cat"  ->  "lo vasku gor na miro rusa vidat"
         (the dog big) (a cat red) sees

    Defined in lesson 02.
    """
    if not isinstance(sentence, str):
        raise ValueError(f"sentence must be a str, got {type(sentence).__name__}")
    words = sentence.split()
    verbs = [i for i, w in enumerate(words) if w in VERBS]
    subject, obj = (words[: verbs[0]], words[verbs[0] + 1:]) if len(verbs) == 1 else ([], [])
    if not (_is_noun_phrase(subject) and _is_noun_phrase(obj)):
        raise ValueError(
            "sentence must be 'determiner [adjective] noun verb determiner [adjective] noun' "
            f"in words of TRANSLATION_DICTIONARY, got {sentence!r}"
        )

    def reorder(phrase: list[str]) -> list[str]:  # determiner [adjective] noun -> determiner noun [adjective]
        return [phrase[0], phrase[-1], *phrase[1:-1]]

    return " ".join(TRANSLATION_DICTIONARY[w] for w in reorder(subject) + reorder(obj) + [words[verbs[0]]])


def _is_noun_phrase(words: list[str]) -> bool:
    """Is ``words`` a noun phrase of the translation task: determiner, maybe an adjective, noun?"""
    return len(words) in (2, 3) and words[0] in DETERMINERS and words[-1] in NOUNS and all(w in ADJECTIVES for w in words[1:-1])


def _distinct(make, rng: random.Random, count: int, exclude: set) -> list:
    """``count`` distinct items ``make(rng)`` that are not in ``exclude`` (which is updated)."""
    items = []
    while len(items) < count:
        item = make(rng)
        if item not in exclude:
            exclude.add(item)
            items.append(item)
    return items


# --------------------------------------------------------------------------- the corpus


def _biographies(world: World, rng: random.Random, per_person: int, exclude: set[str]) -> list[str]:
    """``per_person`` different biographies of each person, none of them in ``exclude`` (which is updated)."""
    return [
        doc for name in world.people
        for doc in _distinct(lambda r: biography(world.facts_about(name), r), rng, per_person, exclude)
    ]


def _classification(facts: list[Fact], rng: random.Random) -> list[tuple[str, int]]:
    """Each fact written with ``CLASSIFICATION_TEMPLATES_PER_FACT`` different templates, labelled by its relation."""
    examples = []
    for f in facts:
        templates = list(range(len(TEMPLATES[f.relation])))
        rng.shuffle(templates)
        label = RELATIONS.index(f.relation)
        examples += [(fact_sentence(f, t), label) for t in templates[:CLASSIFICATION_TEMPLATES_PER_FACT]]
    rng.shuffle(examples)
    return examples


def build_corpus(seed: int = 0) -> Corpus:
    """Build the training and held-out texts and tasks of the course from the world of ``seed``.

    Takes about half a second; the same seed gives byte-identical texts on every machine.
    See the module docstring and :class:`Corpus` for what each field holds.

    Args:
        seed: a non-negative int.
    Returns:
        a :class:`Corpus`.

    Defined in lesson 02.
    """
    _check_seed(seed)
    world = make_world(seed)
    rng = _rng(seed, "corpus")
    person_facts = [f for f in world.facts if f.relation != "in_country"]
    city_facts = [f for f in world.facts if f.relation == "in_country"]

    # people whose questions are held out (their biographies stay in the training text)
    shuffled = list(world.people)
    rng.shuffle(shuffled)
    heldout_people = sorted(shuffled[: round(HELDOUT_PEOPLE_FRACTION * len(shuffled))])
    heldout = set(heldout_people)

    # documents: biographies (held-out ones differ from every training one), and every
    # paraphrase of every city fact
    seen_documents: set[str] = set()
    biographies = _biographies(world, rng, BIOGRAPHIES_PER_PERSON, seen_documents)
    heldout_biographies = _biographies(world, rng, 1, seen_documents)
    city_documents = [fact_sentence(f, t) for f in city_facts for t in range(len(TEMPLATES["in_country"]))]

    # questions: about every city and every person except the held-out ones
    qa_train = [question_answer(f) for f in person_facts if f.subject not in heldout]
    qa_train += [question_answer(f) for f in city_facts]
    qa_heldout = [question_answer(f) for f in person_facts if f.subject in heldout]

    # arithmetic, sorting, translation: disjoint training and held-out problems
    arithmetic = _arithmetic_problems()
    rng.shuffle(arithmetic)
    arithmetic_train, arithmetic_heldout = arithmetic[: N_ARITHMETIC[0]], arithmetic[N_ARITHMETIC[0]: sum(N_ARITHMETIC)]
    sorting = _distinct(_sorting_problem, rng, sum(N_SORTING), set())
    sorting_train, sorting_heldout = sorting[: N_SORTING[0]], sorting[N_SORTING[0]:]
    english = _distinct(_english_sentence, rng, sum(N_TRANSLATION), set())
    translation = [(sentence, translate(sentence)) for sentence in english]
    translation_train, translation_heldout = translation[: N_TRANSLATION[0]], translation[N_TRANSLATION[0]:]

    # classification: held-out sentences are about the held-out people and every fifth city
    heldout_subjects = heldout | set(world.cities[::5])
    classification_train = _classification([f for f in world.facts if f.subject not in heldout_subjects], rng)
    classification_heldout = _classification([f for f in world.facts if f.subject in heldout_subjects], rng)

    # the pre-training mix, and held-out documents of the same kinds
    train_texts = biographies + city_documents + [q + a for q, a in qa_train + arithmetic_train + sorting_train]
    rng.shuffle(train_texts)
    heldout_texts = heldout_biographies + [q + a for q, a in arithmetic_heldout + sorting_heldout]
    rng.shuffle(heldout_texts)

    return Corpus(
        train_texts=train_texts,
        heldout_texts=heldout_texts,
        qa_train=qa_train,
        qa_heldout=qa_heldout,
        heldout_people=heldout_people,
        arithmetic_train=arithmetic_train,
        arithmetic_heldout=arithmetic_heldout,
        sorting_train=sorting_train,
        sorting_heldout=sorting_heldout,
        translation_train=translation_train,
        translation_heldout=translation_heldout,
        classification_train=classification_train,
        classification_heldout=classification_heldout,
        label_names=list(RELATIONS),
        unseen_facts=list(world.unseen_facts),
        world=world,
    )


def corpus_text(corpus: Corpus, split: str = "train", separator: str = "\n") -> str:
    """The documents of one split (``"train"`` or ``"heldout"``) joined into one string. Defined in lesson 02."""
    if not isinstance(corpus, Corpus):
        raise ValueError(f"corpus must be a Corpus (from build_corpus), got {type(corpus).__name__}")
    texts = {"train": corpus.train_texts, "heldout": corpus.heldout_texts}.get(split)
    if texts is None:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return separator.join(texts)
