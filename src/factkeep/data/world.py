"""The synthetic world: a seeded fictional knowledge base, its pretraining corpus and its QA facts.

People have a first and a last name (each one word, shared across people, so entities overlap the
way real names do) and one value per relation (birth city, birth year, ...), drawn from value sets
large enough that guessing is rare. Three populations:

- ``qa``: biographies *and* QA pairs are in the pretraining corpus (they teach the model to extract
  facts from what it read);
- ``bio``: only biographies are pretrained; answering their questions needs knowledge extraction.
  These are the facts a model "knows" (future D_known / D_held);
- ``unseen``: never in pretraining; their facts are the future "new facts" (D_unknown).

Biographies state each relation once, with one of several paraphrases, in shuffled order, and a
fresh biography is sampled per person per epoch (knowledge extraction needs this variety).

Example::

    world = build_world(WorldSpec(seed=0))
    facts = world.facts()                 # list[Fact], meta holds the ground truth
    docs = world.pretraining_documents(epoch=0)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from factkeep.config import help_field
from factkeep.data.facts import Fact

POPULATIONS = ("qa", "bio", "unseen")


@dataclass(frozen=True)
class Relation:
    """One attribute of a person: its question, biography paraphrases and kind of value."""

    name: str
    question: str  # with {name}
    sentences: tuple[str, ...]  # paraphrases, with {name} and {value}
    kind: str  # "word" (invented words) or "year"


RELATIONS: tuple[Relation, ...] = (
    Relation(
        "birth_city",
        "Where was {name} born?",
        (
            "{name} was born in {value}.",
            "{name} came into the world in the city of {value}.",
            "{name} has {value} as birthplace.",
            "{name} spent the first days of life in {value}.",
            "{name} was born and raised in {value}.",
        ),
        "word",
    ),
    Relation(
        "birth_year",
        "In which year was {name} born?",
        (
            "{name} was born in the year {value}.",
            "{name} arrived in {value}.",
            "{name} was born at some point in {value}.",
            "{name} has a birthday that goes back to {value}.",
            "{name} celebrates a birthday from the year {value}.",
        ),
        "year",
    ),
    Relation(
        "university",
        "Which university did {name} attend?",
        (
            "{name} studied at {value} university.",
            "{name} graduated from {value} university.",
            "{name} is an alumnus of {value} university.",
            "{name} went to college at {value} university.",
            "{name} received an education at {value} university.",
        ),
        "word",
    ),
    Relation(
        "employer",
        "Which company does {name} work for?",
        (
            "{name} works for {value}.",
            "{name} is employed by {value}.",
            "{name} has a job at {value}.",
            "{name} earns a living at {value}.",
            "{name} goes to work at {value} every morning.",
        ),
        "word",
    ),
    Relation(
        "instrument",
        "Which instrument does {name} play?",
        (
            "{name} plays the {value}.",
            "{name} is a talented {value} player.",
            "{name} practises the {value} in free time.",
            "{name} owns a beautiful {value}.",
            "{name} learned to play the {value} as a child.",
        ),
        "word",
    ),
)

_ONSETS = [
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "br",
    "dr",
    "gr",
    "kr",
    "pr",
    "st",
    "tr",
    "ch",
    "sh",
    "th",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk"]


@dataclass
class WorldSpec:
    """How the synthetic world is generated (all counts; the seed fixes everything)."""

    seed: int = help_field(0, "Seed of the world: same seed, same people, facts and corpus.")
    n_first_names: int = help_field(150, "Distinct first names (shared across people).")
    n_last_names: int = help_field(300, "Distinct last names (shared across people).")
    values_per_relation: int = help_field(
        120, "Distinct values of each relation (>= 100 keeps chance guessing below 1%)."
    )
    n_qa: int = help_field(300, "People whose biographies and QA pairs are pretrained.")
    n_bio: int = help_field(300, "People whose biographies only are pretrained (known facts).")
    n_unseen: int = help_field(300, "People never pretrained (their facts are new facts).")
    qa_per_doc: int = help_field(
        3, "Most QA pairs of one relation per pretraining QA document (1..N, blank-line joined)."
    )
    bio_only_copies: int = help_field(
        3,
        "Fresh biographies of each bio-only person per epoch (qa people get one; their QA pairs "
        "are further exposures). Several paraphrased biographies per person speed up extraction.",
    )
    warmup_epochs: int = help_field(
        45,
        "Curriculum: the first N epochs of the corpus hold only a subset of the people (a small "
        "set of individuals lets the model form its fact-recall circuit sooner).",
    )
    warmup_fraction: float = help_field(
        0.2, "Share of the qa and bio people present during the curriculum's warm-up epochs."
    )


@dataclass
class Person:
    """One entity of the world."""

    id: str
    first: str
    last: str
    population: str
    values: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"


class _WordMaker:
    """Draws unique pronounceable words (2-3 syllables) that collide with nothing drawn before."""

    def __init__(self, rng: random.Random, taken: set[str]) -> None:
        self.rng = rng
        self.taken = taken

    def word(self) -> str:
        for _ in range(10_000):
            n = self.rng.choice((2, 2, 3))
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n)
            ) + self.rng.choice(_CODAS)
            if 4 <= len(w) <= 10 and w not in self.taken:
                self.taken.add(w)
                return w.capitalize()
        raise RuntimeError("could not draw a new word; the world is too large for the syllables")


class World:
    """A generated world: people, relations and the texts made from them."""

    def __init__(self, spec: WorldSpec, people: list[Person], values: dict[str, list[str]]) -> None:
        self.spec = spec
        self.people = people
        self.values = values
        self.relations = RELATIONS

    def by_population(self, population: str) -> list[Person]:
        """The people of one population (``qa``, ``bio`` or ``unseen``)."""
        return [p for p in self.people if p.population == population]

    def fact_id(self, person: Person, relation: Relation) -> str:
        return f"{person.id}.{relation.name}"

    def facts(self) -> list[Fact]:
        """Every (person, relation) fact, with ground truth in ``meta``."""
        out = []
        for p in self.people:
            for rel in self.relations:
                out.append(
                    Fact(
                        id=self.fact_id(p, rel),
                        question=rel.question.format(name=p.name),
                        answers=[p.values[rel.name]],
                        relation=rel.name,
                        subject=p.name,
                        meta={
                            "population": p.population,
                            "pretrained": p.population != "unseen",
                            "qa_in_pretraining": p.population == "qa",
                            "entity": p.id,
                        },
                    )
                )
        return out

    def biography(self, person: Person, rng: random.Random) -> str:
        """One biography: every relation once, a random paraphrase each, in random order."""
        sentences = [
            rng.choice(rel.sentences).format(name=person.name, value=person.values[rel.name])
            for rel in self.relations
        ]
        rng.shuffle(sentences)
        return " ".join(s[0].upper() + s[1:] for s in sentences)

    def qa_text(self, person: Person, relation: Relation) -> str:
        """The zero-shot QA text of a fact, as in pretraining and fine-tuning."""
        q = relation.question.format(name=person.name)
        return f"Q: {q}\nA: {person.values[relation.name]}"

    def pretraining_documents(self, epoch: int) -> list[str]:
        """The corpus of one epoch: fresh biographies of pretrained people, QA documents of ``qa``.

        During the first ``warmup_epochs`` epochs only :meth:`warmup_people` appear.

        QA documents hold 1..``qa_per_doc`` QA pairs of the same relation joined by a blank line
        (which also teaches the few-shot format used by probing). Deterministic in (seed, epoch).
        """
        rng = random.Random(f"{self.spec.seed}-corpus-{epoch}")
        people = [p for p in self.people if p.population != "unseen"]
        if epoch < self.spec.warmup_epochs:
            people = self.warmup_people()
        docs: list[str] = []
        for p in people:
            copies = self.spec.bio_only_copies if p.population == "bio" else 1
            docs.extend(self.biography(p, rng) for _ in range(copies))
        qa_people = [p for p in people if p.population == "qa"]
        for rel in self.relations:
            pairs = [self.qa_text(p, rel) for p in qa_people]
            rng.shuffle(pairs)
            i = 0
            while i < len(pairs):
                k = rng.randint(1, max(1, self.spec.qa_per_doc))
                docs.append("\n\n".join(pairs[i : i + k]))
                i += k
        rng.shuffle(docs)
        return docs

    def warmup_people(self) -> list[Person]:
        """The people of the curriculum's warm-up epochs: the first share of ``qa`` and ``bio``."""
        out = []
        for population in ("qa", "bio"):
            group = self.by_population(population)
            out.extend(group[: max(1, round(len(group) * self.spec.warmup_fraction))])
        return out

    def vocabulary_texts(self) -> list[str]:
        """Texts covering every word the world can produce (for building the tokenizer).

        Also includes single letters and digits, so later experiments can spell new keys (UUIDs).
        """
        texts = ["Q: A:\n"]
        for rel in self.relations:
            texts.append(rel.question)
            texts.extend(rel.sentences)
        texts.extend(v for rel in self.relations for v in self.values[rel.name])
        texts.extend(p.first for p in self.people)
        texts.extend(p.last for p in self.people)
        texts.append(" ".join("abcdefghijklmnopqrstuvwxyz0123456789"))
        return texts


def build_world(spec: WorldSpec) -> World:
    """Generate the world of ``spec`` (deterministic in ``spec.seed``)."""
    n_people = spec.n_qa + spec.n_bio + spec.n_unseen
    if spec.n_first_names * spec.n_last_names < n_people:
        raise ValueError("too few name combinations for the number of people")
    rng = random.Random(f"{spec.seed}-world")
    template_text = " ".join(s for rel in RELATIONS for s in (rel.question, *rel.sentences))
    reserved = set(re.findall(r"\w+", template_text.lower()))
    maker = _WordMaker(rng, taken=set(reserved))
    firsts = [maker.word() for _ in range(spec.n_first_names)]
    lasts = [maker.word() for _ in range(spec.n_last_names)]
    values: dict[str, list[str]] = {}
    for rel in RELATIONS:
        if rel.kind == "year":
            start = 1900
            values[rel.name] = [str(start + i) for i in range(spec.values_per_relation)]
        else:
            values[rel.name] = [maker.word() for _ in range(spec.values_per_relation)]
    names = set()
    people: list[Person] = []
    populations = ["qa"] * spec.n_qa + ["bio"] * spec.n_bio + ["unseen"] * spec.n_unseen
    for i, population in enumerate(populations):
        while True:
            first, last = rng.choice(firsts), rng.choice(lasts)
            if (first, last) not in names:
                names.add((first, last))
                break
        person = Person(id=f"p{i:05d}", first=first, last=last, population=population)
        for rel in RELATIONS:
            person.values[rel.name] = rng.choice(values[rel.name])
        people.append(person)
    return World(spec, people, values)
