//! Mutated manifests through the loader: whatever the bytes, `manifest::load` returns a
//! pipeline or an error, and never panics. A bounded run is part of the test command; a
//! longer one:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test --release --test fuzz_manifest
//! ```

use proptest::prelude::*;

const SEEDS: [&str; 2] = [
    include_str!("../pipelines/demo.toml"),
    include_str!("corpus/broken/000-type-seed.toml"),
];

/// Tokens a mutation may insert: TOML punctuation and values that stress the loader.
const TOKENS: [&str; 24] = [
    "=",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    ",",
    ".",
    "\n",
    "nan",
    "inf",
    "-1",
    "0",
    "1e309",
    "[[stages.x]]",
    "[stages.x]",
    "kind = \"train\"",
    "input = \"x\"",
    "$k",
    "@",
    "\u{7}",
    "layers = []",
    "9999999999999999999999",
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Insert(usize, usize),
    ReplaceChar(usize, char),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Mutation::ReplaceChar(a, c)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let n = lines.len().max(1);
    match *m {
        Mutation::DeleteLine(i) => {
            if !lines.is_empty() {
                lines.remove(i % n);
            }
        }
        Mutation::DuplicateLine(i) => {
            if !lines.is_empty() {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
        }
        Mutation::SwapLines(a, b) => {
            if !lines.is_empty() {
                lines.swap(a % n, b % n);
            }
        }
        Mutation::Insert(at, t) => {
            let mut s = lines.join("\n");
            let mut i = at % (s.len() + 1);
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            s.insert_str(i, TOKENS[t]);
            return s;
        }
        Mutation::ReplaceChar(at, c) => {
            let mut chars: Vec<char> = lines.join("\n").chars().collect();
            if !chars.is_empty() {
                let i = at % chars.len();
                chars[i] = c;
            }
            return chars.into_iter().collect();
        }
        Mutation::Truncate(at) => {
            let s = lines.join("\n");
            let mut i = at % (s.len() + 1);
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            return s[..i].to_string();
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_manifests_never_panic_the_loader(
        seed in 0..SEEDS.len(),
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        let mut text = SEEDS[seed].to_string();
        for m in &muts {
            text = apply(&text, m);
        }
        let path = dir.path().join("pipelines/m.toml");
        std::fs::write(&path, &text).unwrap();
        if let Ok(mut p) = pipe::manifest::load(&path, &[], dir.path()) {
            pipe::engine::resolve_devices(&mut p);
            for name in p.library.networks.keys() {
                if let Ok(x) = pipe::nn::expand(&p.library, name, None) {
                    let _ = x.graph.infer();
                }
            }
        }
    }
}
