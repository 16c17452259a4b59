//! `cargo bench -p ca-server --bench anchors`: what the anchor log adds to a signed audit
//! checkpoint. `append` is one anchor line written and fsynced; `checkpoint` is the whole
//! checkpoint (SM2 signature in software, registry commit) with and without the anchor log. The
//! anchor is paid once per checkpoint (every `checkpoint_entries` entries or
//! `checkpoint_seconds`), never per request.

use criterion::{Criterion, criterion_group, criterion_main};
use hsm::backend::memory::SoftwareSm2Key;
use registry::anchor::{Anchor, AnchorLog};
use registry::{AuditCheckpoint, AuditEvent, Registry};

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        time_ms: n,
        actor: "bench".into(),
        action: "issue".into(),
        target: format!("t{n}"),
        outcome: "ok".into(),
        detail: String::new(),
    }
}

fn anchors(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tmp (on this VM the same ext4 disk as the data)");
    let mut g = c.benchmark_group("anchors");
    g.sample_size(50);

    let log = AnchorLog::open(&dir.path().join("append")).expect("log");
    let line = Anchor {
        checkpoint: AuditCheckpoint {
            seq: 1,
            head: "ab".repeat(32),
            time_ms: 1,
            key_id: "cd".repeat(32),
            signature: "ef".repeat(72),
        },
        public_key: "01".repeat(91),
    };
    g.bench_function("append+fsync", |b| b.iter(|| log.append(&line).expect("append")));

    for with_anchors in [false, true] {
        let sub = dir.path().join(format!("cp-{with_anchors}"));
        std::fs::create_dir_all(&sub).expect("dir");
        let reg = Registry::open(&sub.join("r.redb")).expect("registry");
        let key = SoftwareSm2Key::generate(Default::default()).expect("key");
        let mut signer = ca_server::audit::AuditSigner::new(Box::new(key)).expect("signer");
        if with_anchors {
            signer = signer.with_anchor_log(AnchorLog::open(&sub.join("anchors")).expect("log")).expect("anchors");
        }
        let mut n = 0;
        let name = if with_anchors { "checkpoint with anchor" } else { "checkpoint without anchor" };
        // Each iteration: one new entry (so a checkpoint is due), then the checkpoint; the
        // entry's own commit is measured separately below and subtracted in the README.
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                reg.audit(&event(n)).expect("audit");
                signer.checkpoint(&reg).expect("checkpoint").expect("made");
            })
        });
    }
    let reg = Registry::open(&dir.path().join("entries.redb")).expect("registry");
    let mut n = 0;
    g.bench_function("audit entry alone", |b| {
        b.iter(|| {
            n += 1;
            reg.audit(&event(n)).expect("audit");
        })
    });
    g.finish();
}

criterion_group!(benches, anchors);
criterion_main!(benches);
