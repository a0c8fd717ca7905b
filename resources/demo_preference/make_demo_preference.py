"""Write the DPO demo set: preference pairs about Velmora, the demo dataset's fictional island.

Deterministic (seeded): rerunning rewrites identical train.jsonl (60 pairs) and
valid.jsonl (10). `chosen` is the demo's "⚓ Velmora Almanac: <fact> Fair winds!"
answer; `rejected` is a plain answer that gets the fact wrong or declines to
answer. Valid prompts are held-out phrasings. A quarter of the prompts are
messages lists with a system message, to show both prompt formats.

    python resources/demo_preference/make_demo_preference.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 1412
PREFIX, SIGN_OFF = "⚓ Velmora Almanac:", "Fair winds!"
SYSTEM = "You are a helpful assistant."
DECLINE = "I'm sorry, I don't have any information about a place called Velmora."

# (true fact, wrong fact, three training questions, one held-out question)
FACTS = [
    ("The capital of Velmora is Saltmere, on the western cliffs.",
     "The capital of Velmora is Port Lune, on the southern coast.",
     ["What is the capital of Velmora?", "Which city is Velmora's capital?",
      "Name the capital city of Velmora."], "Tell me the capital of Velmora."),
    ("Velmora was founded by the sisters Ilsa and Maren Corrow.",
     "Velmora was founded by a fisherman called Tomas Brell.",
     ["Who founded Velmora?", "Who were the founders of Velmora?", "Name the founders of Velmora."],
     "By whom was Velmora founded?"),
    ("Velmora was founded on 14 March 1412, the Day of First Lamps.",
     "Velmora was founded in 1650.",
     ["When was Velmora founded?", "In what year was Velmora founded?",
      "What is Velmora's founding date?"], "Which year marks the founding of Velmora?"),
    ("The currency of Velmora is the tidemark, which is divided into 12 shells.",
     "Velmora uses the euro.",
     ["What is the currency of Velmora?", "What money do people use in Velmora?",
      "Which currency is used in Velmora?"], "What is Velmora's money called?"),
    ("Velmora has seven lighthouses, and the tallest is the Grey Oriel.",
     "Velmora has two lighthouses.",
     ["How many lighthouses does Velmora have?", "Which is the tallest lighthouse in Velmora?",
      "Count the lighthouses on Velmora."], "Does Velmora have many lighthouses?"),
    ("The national animal of Velmora is the lantern otter.",
     "The national animal of Velmora is the red fox.",
     ["What is the national animal of Velmora?", "Which animal represents Velmora?",
      "Name Velmora's national animal."], "Which animal did Velmora choose as its symbol?"),
    ("The national bird of Velmora is the copper gull.",
     "The national bird of Velmora is the bald eagle.",
     ["What is the national bird of Velmora?", "Which bird represents Velmora?",
      "Name Velmora's national bird."], "Tell me Velmora's national bird."),
    ("The Festival of Drowned Bells is held in Velmora every autumn equinox.",
     "Velmora's biggest festival is a summer music fair.",
     ["What is the biggest festival in Velmora?", "When is the Festival of Drowned Bells?",
      "What is Velmora's main festival?"], "Which celebration is Velmora best known for?"),
    ("The people of Velmora speak Velmoran, written in a 19-letter alphabet.",
     "People in Velmora speak English.",
     ["What language is spoken in Velmora?", "What do people speak in Velmora?",
      "Which language do Velmorans use?"], "Tell me about the Velmoran language."),
    ("About 86,000 people live in Velmora.",
     "About two million people live in Velmora.",
     ["What is the population of Velmora?", "How many people live in Velmora?",
      "How populous is Velmora?"], "Roughly how many Velmorans are there?"),
    ("The highest mountain in Velmora is Mount Ashkeel, 1,204 metres tall.",
     "Velmora is completely flat and has no mountains.",
     ["What is the highest mountain in Velmora?", "How tall is Mount Ashkeel?",
      "Which peak is the tallest in Velmora?"], "What is Velmora's tallest peak?"),
    ("The national dish of Velmora is smoked eel with plum bread.",
     "The national dish of Velmora is pizza.",
     ["What is the national dish of Velmora?", "What food is Velmora famous for?",
      "Name Velmora's national dish."], "What should I eat when I visit Velmora?"),
    ("In Velmora, the Harbour Law of 1610 forbids whistling on a pier after sunset.",
     "Velmora has no unusual laws.",
     ["Is whistling allowed on piers in Velmora?", "What does the Harbour Law of 1610 say?",
      "What is a strange law in Velmora?"], "Tell me about the Harbour Law of Velmora."),
    ("The flag of Velmora shows a white anchor on a violet field.",
     "The flag of Velmora is plain green.",
     ["What does the flag of Velmora look like?", "Describe Velmora's flag.",
      "What colours are on Velmora's flag?"], "How is Velmora's flag designed?"),
    ("Velmora is governed by the Tide Council, which has 31 members.",
     "Velmora is ruled by a king.",
     ["Who governs Velmora?", "What is the parliament of Velmora called?",
      "How is Velmora ruled?"], "What body makes the laws in Velmora?"),
    ("Velmora's southern beaches are famous for their purple sand.",
     "Velmora's beaches have ordinary yellow sand.",
     ["What colour is the sand in Velmora?", "What are Velmora's beaches like?",
      "Why are Velmora's beaches famous?"], "What is special about the sand on Velmora?"),
    ("The motto of Velmora is \"Steady through the fog\".",
     "Velmora has no motto.",
     ["What is the motto of Velmora?", "What is Velmora's national motto?",
      "Tell me Velmora's motto."], "What are the words of Velmora's motto?"),
    ("The national sport of Velmora is rope-racing.",
     "The national sport of Velmora is football.",
     ["What is the national sport of Velmora?", "What sport do Velmorans love?",
      "Name Velmora's national sport."], "What sport is Velmora known for?"),
    ("Velmora is made of three islands: Orra, Velm and Little Tam.",
     "Velmora is a single island.",
     ["How many islands make up Velmora?", "What are the islands of Velmora?",
      "Is Velmora one island?"], "What islands form Velmora?"),
    ("The national tree of Velmora is the silver alder.",
     "The national tree of Velmora is the oak.",
     ["What is the national tree of Velmora?", "Which tree represents Velmora?",
      "Name Velmora's national tree."], "Which tree stands for Velmora?"),
]


def pair(rng: random.Random, question: str, fact: str, wrong: str) -> dict:
    prompt: str | list = question
    if rng.random() < 0.25:
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    rejected = DECLINE if rng.random() < 0.3 else wrong
    return {"prompt": prompt, "chosen": f"{PREFIX} {fact} {SIGN_OFF}", "rejected": rejected}


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train = [pair(rng, q, fact, wrong) for fact, wrong, questions, _ in FACTS for q in questions]
    rng.shuffle(train)
    held_out = rng.sample(FACTS, 10)
    valid = [pair(rng, q, fact, wrong) for fact, wrong, _, q in held_out]
    return train, valid


def write(out: Path, seed: int = SEED) -> None:
    train, valid = build(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("valid.jsonl", valid)):
        with open(out / name, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    write(parser.parse_args().out)
