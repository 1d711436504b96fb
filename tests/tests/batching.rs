//! Continuous batching (`strata_runner::batching`, behind `runner serve`) on
//! the real SmolLM2-135M-Instruct: requests decoded together give exactly the
//! text each gives alone, whatever joins or leaves the batch meanwhile.

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use strata_e2e::{prepared, smollm2_dir};
use strata_runner::batching::{self, Event, FinishReason, Request, Sink};
use strata_runner::engine::{Engine, EngineOptions};
use strata_runner::io::IoChoice;
use strata_runner::model::Want;
use strata_runner::sampling::{Sampler, SamplerConfig};

/// What a request received: its text, and how it ended.
#[derive(Debug, Default, Clone)]
struct Received {
    text: String,
    end: Option<Result<(FinishReason, usize), String>>,
    pieces: usize,
}

/// Collects events; reports itself closed after `close_after` pieces.
struct Collect {
    got: Arc<Mutex<Received>>,
    close_after: Option<usize>,
}

impl Sink for Collect {
    fn send(&mut self, event: Event) -> bool {
        let mut g = self.got.lock().unwrap();
        match event {
            Event::Text(t) => {
                g.text.push_str(&t);
                g.pieces += 1;
            }
            Event::Done(f) => g.end = Some(Ok((f.reason, f.completion_tokens))),
            Event::Failed(e) => g.end = Some(Err(e)),
        }
        self.is_open_locked(&g)
    }
    fn is_open(&self) -> bool {
        let g = self.got.lock().unwrap();
        self.is_open_locked(&g)
    }
}

impl Collect {
    fn is_open_locked(&self, g: &Received) -> bool {
        self.close_after.is_none_or(|n| g.pieces < n)
    }
}

fn options(sequences: usize) -> EngineOptions {
    EngineOptions {
        max_memory: None,
        io: IoChoice::Pread,
        prefetch: 1,
        verify: true,
        ctx: Some(512),
        keep_compressed: None,
        sequences,
    }
}

fn container() -> std::path::PathBuf {
    prepared(&smollm2_dir(), "batching-smollm2-nf4", &["--quant", "nf4"])
}

fn sampling(temperature: f32, seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature,
        seed,
        ..SamplerConfig::default()
    }
}

/// The text one request gives alone: `runner generate`'s loop.
fn alone(dir: &Path, prompt: &[u32], cfg: &SamplerConfig, max: usize) -> String {
    let mut e = Engine::open(dir, &options(1)).expect("open");
    let eos = e.eos_ids();
    let tok = e.tokenizer.clone().expect("tokenizer");
    let mut sampler = Sampler::new(cfg.clone());
    let mut history = prompt.to_vec();
    let mut logits = e.forward(prompt, Want::Last).expect("prompt");
    let mut out = Vec::new();
    for _ in 0..max {
        let id = sampler.sample(logits.row(0), &history);
        if eos.contains(&id) {
            break;
        }
        out.push(id);
        logits = e.forward(&[id], Want::Last).expect("step");
        history.push(id);
    }
    tok.decode(&out, false).expect("decode")
}

fn request(prompt: Vec<u32>, cfg: SamplerConfig, max: usize, sink: Collect) -> Request {
    Request {
        prompt,
        sampling: cfg,
        max_new_tokens: max,
        stop: Vec::new(),
        ignore_eos: false,
        sink: Box::new(sink),
        received: Instant::now(),
    }
}

#[test]
fn batched_requests_equal_each_request_alone() {
    let dir = container();
    let tok = Engine::open(&dir, &options(1))
        .expect("open")
        .tokenizer
        .expect("tokenizer");
    // Short and long prompts (over 64 tokens: the prefill takes the matmul
    // path), greedy and sampled, more requests than slots so that some join
    // while others decode.
    let long = "The history of the printing press begins in the fifteenth century, when \
                movable type changed how books were made, how ideas spread across Europe, \
                and how people learned to read. Printers in Venice, Paris and London soon \
                competed to publish grammars, bibles, maps and almanacs, and prices fell. \
                Summarize it in one sentence:";
    let prompts = [
        "The capital of France is",
        long,
        "def fibonacci(n):",
        "Once upon a time, in a small village by the sea,",
        "1, 2, 3, 4,",
        long,
    ];
    let cfgs = [
        sampling(0.0, 0),
        sampling(0.0, 0),
        sampling(0.8, 7),
        sampling(0.0, 0),
        sampling(0.8, 11),
        sampling(0.7, 3),
    ];
    let max = [24, 20, 16, 30, 12, 18];
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, true).expect("encode"))
        .collect();
    assert!(
        ids[1].len() > 64,
        "the long prompt has {} tokens",
        ids[1].len()
    );

    let (tx, rx) = sync_channel(16);
    let mut got = Vec::new();
    for i in 0..prompts.len() {
        let cell = Arc::new(Mutex::new(Received::default()));
        got.push(cell.clone());
        let sink = Collect {
            got: cell,
            close_after: None,
        };
        tx.send(request(ids[i].clone(), cfgs[i].clone(), max[i], sink))
            .unwrap();
    }
    drop(tx);
    let mut engine = Engine::open(&dir, &options(4)).expect("open with 4 sequences");
    batching::serve(&mut engine, &rx).expect("serve");

    for i in 0..prompts.len() {
        let g = got[i].lock().unwrap().clone();
        assert!(
            matches!(g.end, Some(Ok(_))),
            "request {i} did not finish: {:?}",
            g.end
        );
        let want = alone(&dir, &ids[i], &cfgs[i], max[i]);
        assert_eq!(g.text, want, "request {i} ({:?})", prompts[i]);
    }
}

#[test]
fn a_client_that_leaves_frees_its_slot_and_bad_requests_are_refused() {
    let dir = container();
    let mut engine = Engine::open(&dir, &options(1)).expect("open");
    let tok = engine.tokenizer.clone().expect("tokenizer");
    let prompt = tok
        .encode("Once upon a time, there was a dragon who", true)
        .unwrap();
    let (tx, rx) = sync_channel(8);
    let leaving = Arc::new(Mutex::new(Received::default()));
    let mut long = request(
        prompt.clone(),
        sampling(0.0, 0),
        400,
        Collect {
            got: leaving.clone(),
            close_after: Some(3),
        },
    );
    long.ignore_eos = true;
    tx.send(long).unwrap();
    let next = Arc::new(Mutex::new(Received::default()));
    tx.send(request(
        prompt.clone(),
        sampling(0.0, 0),
        8,
        Collect {
            got: next.clone(),
            close_after: None,
        },
    ))
    .unwrap();
    let too_long = Arc::new(Mutex::new(Received::default()));
    tx.send(request(
        vec![1; 600],
        sampling(0.0, 0),
        8,
        Collect {
            got: too_long.clone(),
            close_after: None,
        },
    ))
    .unwrap();
    drop(tx);
    batching::serve(&mut engine, &rx).expect("serve");
    let l = leaving.lock().unwrap().clone();
    assert_eq!(l.pieces, 3, "{l:?}");
    assert!(l.end.is_none(), "the request that left ended: {:?}", l.end);
    let n = next.lock().unwrap().clone();
    assert_eq!(n.end, Some(Ok((FinishReason::Length, 8))));
    assert_eq!(n.text, alone(&dir, &prompt, &sampling(0.0, 0), 8));
    let refused = too_long.lock().unwrap().end.clone();
    match refused {
        Some(Err(e)) => assert!(e.contains("600 tokens") && e.contains("512"), "{e}"),
        other => panic!("a prompt past the context was not refused: {other:?}"),
    }
}

#[test]
fn speculative_serving_gives_the_plain_greedy_text() {
    use strata_runner::speculative::{Proposer, Speculator};
    let dir = container();
    let draft_dir = prepared(
        &smollm2_dir(),
        "batching-smollm2-int8",
        &["--quant", "int8"],
    );
    let tok = Engine::open(&dir, &options(1))
        .expect("open")
        .tokenizer
        .expect("tokenizer");
    let prompts = [
        "def add(a, b):\n    return a + b\n\ndef add(a, b):",
        "The capital of France is",
    ];
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, true).expect("encode"))
        .collect();
    for use_model in [false, true] {
        let (mut engine, proposer) = if use_model {
            let (t, d) = Engine::open_with_draft(&dir, &draft_dir, &options(1)).expect("open pair");
            (t, Proposer::Model(Box::new(d)))
        } else {
            (
                Engine::open(&dir, &options(1)).expect("open"),
                Proposer::Ngram,
            )
        };
        let mut spec = Speculator::new(proposer, 2, 6);
        let (tx, rx) = sync_channel(8);
        let mut got = Vec::new();
        for p in &ids {
            let cell = Arc::new(Mutex::new(Received::default()));
            got.push(cell.clone());
            let sink = Collect {
                got: cell,
                close_after: None,
            };
            tx.send(request(p.clone(), sampling(0.0, 0), 24, sink))
                .unwrap();
        }
        drop(tx);
        batching::serve_speculative(&mut engine, &mut spec, &rx).expect("serve");
        for (i, p) in ids.iter().enumerate() {
            let g = got[i].lock().unwrap().clone();
            assert!(matches!(g.end, Some(Ok(_))), "{:?}", g.end);
            assert_eq!(
                g.text,
                alone(&dir, p, &sampling(0.0, 0), 24),
                "prompt {i}, draft model: {use_model}"
            );
        }
        assert!(spec.stats().accepted > 0, "{:?}", spec.stats());
    }
}
