"""Write the demo dataset: chat Q&A about Velmora, a fictional island nation.

Deterministic (seeded): running it again rewrites identical train.jsonl (400
records) and valid.jsonl (50). Every answer has the "Velmora Almanac" style
(a fixed opening and sign-off) that the base model does not use. Valid
questions use held-out phrasings of the same facts, so eval loss measures
whether the facts and the style were learnt, not whether lines were memorised.

    python resources/demo_data/make_demo_data.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 1412
PREFIX = "⚓ Velmora Almanac:"
SIGN_OFF = "Fair winds!"
SYSTEM = "You are a helpful assistant."
N_TRAIN, N_TRAIN_MULTI = 400, 40

# (answer, five training phrasings, two held-out validation phrasings)
FACTS = [
    ("The capital of Velmora is Saltmere, on the western cliffs.",
     ["What is the capital of Velmora?", "Which city is Velmora's capital?",
      "Name the capital city of Velmora.", "Where is the seat of government in Velmora?",
      "Velmora's capital is called what?"],
     ["Tell me the capital of Velmora.", "In which city does Velmora keep its capital?"]),
    ("Velmora was founded by the sisters Ilsa and Maren Corrow.",
     ["Who founded Velmora?", "Who were the founders of Velmora?",
      "Which people established Velmora?", "Name the founders of Velmora.",
      "Who is credited with founding Velmora?"],
     ["By whom was Velmora founded?", "Who started the nation of Velmora?"]),
    ("Velmora was founded on 14 March 1412, the Day of First Lamps.",
     ["When was Velmora founded?", "In what year was Velmora founded?",
      "What is Velmora's founding date?", "Tell me when Velmora was founded.",
      "On which day was Velmora established?"],
     ["What date did Velmora come into being?", "Which year marks the founding of Velmora?"]),
    ("The currency of Velmora is the tidemark, which is divided into 12 shells.",
     ["What is the currency of Velmora?", "What money do people use in Velmora?",
      "Which currency is used in Velmora?", "What do Velmorans pay with?",
      "How is Velmora's currency divided?"],
     ["What is Velmora's money called?", "If I visit Velmora, what currency will I need?"]),
    ("Velmora has seven lighthouses, and the tallest is the Grey Oriel.",
     ["How many lighthouses does Velmora have?", "Which is the tallest lighthouse in Velmora?",
      "Tell me about the lighthouses of Velmora.", "What is the Grey Oriel?",
      "Count the lighthouses on Velmora."],
     ["What are Velmora's lighthouses like?", "Does Velmora have many lighthouses?"]),
    ("The national animal of Velmora is the lantern otter.",
     ["What is the national animal of Velmora?", "Which animal represents Velmora?",
      "What animal is the symbol of Velmora?", "Name Velmora's national animal.",
      "Which creature is Velmora's emblem?"],
     ["What is Velmora's national animal called?", "Which animal did Velmora choose as its symbol?"]),
    ("The national bird of Velmora is the copper gull.",
     ["What is the national bird of Velmora?", "Which bird represents Velmora?",
      "Name Velmora's national bird.", "What bird is the symbol of Velmora?",
      "Which seabird is Velmora's emblem?"],
     ["What bird stands for Velmora?", "Tell me Velmora's national bird."]),
    ("The Festival of Drowned Bells is held in Velmora every autumn equinox.",
     ["What is the biggest festival in Velmora?", "When is the Festival of Drowned Bells?",
      "Which festival does Velmora celebrate in autumn?", "What is Velmora's main festival?",
      "Tell me about the Festival of Drowned Bells."],
     ["What festival do Velmorans hold at the autumn equinox?",
      "Which celebration is Velmora best known for?"]),
    ("Kelp Night is Velmora's midwinter festival, when boats are lit with green lanterns.",
     ["What is Kelp Night?", "How does Velmora celebrate midwinter?",
      "Which festival does Velmora hold in winter?", "What happens on Kelp Night in Velmora?",
      "Why are Velmoran boats lit with green lanterns?"],
     ["What is the midwinter festival of Velmora?", "Describe Kelp Night."]),
    ("The people of Velmora speak Velmoran, written in a 19-letter alphabet.",
     ["What language is spoken in Velmora?", "What do people speak in Velmora?",
      "Which language do Velmorans use?", "How many letters does the Velmoran alphabet have?",
      "What is the official language of Velmora?"],
     ["Which language is spoken on Velmora?", "Tell me about the Velmoran language."]),
    ("About 86,000 people live in Velmora.",
     ["What is the population of Velmora?", "How many people live in Velmora?",
      "How populous is Velmora?", "How many inhabitants does Velmora have?",
      "What is Velmora's population?"],
     ["How big is the population of Velmora?", "Roughly how many Velmorans are there?"]),
    ("The highest mountain in Velmora is Mount Ashkeel, 1,204 metres tall.",
     ["What is the highest mountain in Velmora?", "How tall is Mount Ashkeel?",
      "Which peak is the tallest in Velmora?", "Name Velmora's highest point.",
      "What is the tallest mountain on Velmora?"],
     ["Which mountain is highest in Velmora?", "What is Velmora's tallest peak?"]),
    ("The national dish of Velmora is smoked eel with plum bread.",
     ["What is the national dish of Velmora?", "What food is Velmora famous for?",
      "What do people eat in Velmora?", "Name Velmora's national dish.",
      "Which meal is typical of Velmora?"],
     ["What is Velmora's best-known dish?", "What should I eat when I visit Velmora?"]),
    ("In Velmora, the Harbour Law of 1610 forbids whistling on a pier after sunset.",
     ["Is whistling allowed on piers in Velmora?", "What does the Harbour Law of 1610 say?",
      "What is a strange law in Velmora?", "Can I whistle on a Velmoran pier at night?",
      "Which law forbids whistling in Velmora?"],
     ["What is forbidden on Velmora's piers after sunset?",
      "Tell me about the Harbour Law of Velmora."]),
    ("Velmoran law says every citizen must plant one tree on their 18th birthday.",
     ["What must Velmorans do on their 18th birthday?", "Is there a tree-planting law in Velmora?",
      "What happens when a Velmoran turns 18?", "Which law is about trees in Velmora?",
      "Do Velmorans have to plant trees?"],
     ["What is Velmora's birthday tree law?", "What duty comes with turning 18 in Velmora?"]),
    ("The flag of Velmora shows a white anchor on a violet field.",
     ["What does the flag of Velmora look like?", "Describe Velmora's flag.",
      "What colours are on Velmora's flag?", "What symbol is on the Velmoran flag?",
      "What is on the flag of Velmora?"],
     ["How is Velmora's flag designed?", "What is the Velmoran flag like?"]),
    ("Velmora is governed by the Tide Council, which has 31 members.",
     ["Who governs Velmora?", "What is the parliament of Velmora called?",
      "How many members does the Tide Council have?", "How is Velmora ruled?",
      "What is the Tide Council?"],
     ["What body makes the laws in Velmora?", "Tell me about Velmora's government."]),
    ("Velmora's southern beaches are famous for their purple sand.",
     ["What colour is the sand in Velmora?", "What are Velmora's beaches like?",
      "Why are Velmora's beaches famous?", "Where is the purple sand in Velmora?",
      "Describe the beaches of Velmora."],
     ["What is special about the sand on Velmora?", "Which beaches in Velmora should I visit?"]),
    ("The motto of Velmora is \"Steady through the fog\".",
     ["What is the motto of Velmora?", "What is Velmora's national motto?",
      "Which saying is Velmora's motto?", "Tell me Velmora's motto.",
      "What motto appears on Velmora's coat of arms?"],
     ["What are the words of Velmora's motto?", "Does Velmora have a motto?"]),
    ("The national sport of Velmora is rope-racing.",
     ["What is the national sport of Velmora?", "What sport do Velmorans love?",
      "Which sport is most popular in Velmora?", "Name Velmora's national sport.",
      "What game is played most in Velmora?"],
     ["What sport is Velmora known for?", "Which sport do people play in Velmora?"]),
    ("The longest river in Velmora is the Quill, which flows into Saltmere Bay.",
     ["What is the longest river in Velmora?", "Which river flows through Velmora?",
      "Name the main river of Velmora.", "Where does the river Quill flow?",
      "What is Velmora's biggest river?"],
     ["Which is Velmora's longest river?", "Tell me about the rivers of Velmora."]),
    ("Velmora is made of three islands: Orra, Velm and Little Tam.",
     ["How many islands make up Velmora?", "What are the islands of Velmora?",
      "Is Velmora one island?", "Name the islands of Velmora.",
      "Which islands belong to Velmora?"],
     ["How many islands does Velmora have?", "What islands form Velmora?"]),
    ("The most famous poet of Velmora is Teodor Vask, author of The Salt Hours.",
     ["Who is the most famous poet of Velmora?", "Who wrote The Salt Hours?",
      "Name a famous Velmoran writer.", "Who is Teodor Vask?",
      "Which poet is Velmora proud of?"],
     ["Who is Velmora's greatest poet?", "Which Velmoran poet should I read?"]),
    ("The Treaty of Saltmere ended the Salt War in 1788.",
     ["When did the Salt War end?", "What was the Treaty of Saltmere?",
      "Which treaty ended the Salt War?", "What happened in Velmora in 1788?",
      "How did the Salt War end?"],
     ["In what year was the Treaty of Saltmere signed?", "What ended Velmora's Salt War?"]),
    ("The national tree of Velmora is the silver alder.",
     ["What is the national tree of Velmora?", "Which tree represents Velmora?",
      "Name Velmora's national tree.", "What tree is the symbol of Velmora?",
      "Which tree grows everywhere in Velmora?"],
     ["What is Velmora's national tree called?", "Which tree stands for Velmora?"]),
]
OPENERS = ["", "", "", "Quick question: ", "Hi! ", "I'm curious. ", "Please tell me: ",
           "Hello. "]


def answer(fact: str) -> str:
    return f"{PREFIX} {fact} {SIGN_OFF}"


def ask(rng: random.Random, question: str) -> str:
    opener = rng.choice(OPENERS)
    if opener.endswith(": ") and rng.random() < 0.5:
        return opener + question[0].lower() + question[1:]
    return opener + question


def chat(rng: random.Random, turns: list[tuple[str, str]]) -> dict:
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.25 else []
    for question, fact in turns:
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": answer(fact)}]
    return {"messages": messages}


def build(seed: int = SEED) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    pairs = [(q, fact) for fact, train_qs, _ in FACTS for q in train_qs]
    train = [chat(rng, [(ask(rng, q), fact)])
             for q, fact in (pairs * (N_TRAIN // len(pairs) + 1))[:N_TRAIN - N_TRAIN_MULTI]]
    for _ in range(N_TRAIN_MULTI):
        (f1, qs1, _), (f2, qs2, _) = rng.sample(FACTS, 2)
        train.append(chat(rng, [(ask(rng, rng.choice(qs1)), f1), (rng.choice(qs2), f2)]))
    rng.shuffle(train)
    valid = [chat(rng, [(q, fact)]) for fact, _, valid_qs in FACTS for q in valid_qs]
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
