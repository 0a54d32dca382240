//! The engine driven in-process, with byte buffers for stdin and stdout
//! and a blob store in memory whose faults the tests choose: the remote
//! tier's rules (switch-off, budget, single flight, prefetch, advice,
//! damage) in seconds, without a go command or an S3 server. The
//! end-to-end tests of the binary run the same engine against the real
//! ones.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use granary_id::Id;
use granary_prog::{Options, RemoteOptions, Scopes, Summary};
use granary_protocol::{Request, write_request};
use granary_remote::memory::{Faults, MemoryBlobs};
use granary_remote::{Format, Namespace, RemoteCache};
use granary_store::Store;
use granary_trust::{SigningKey, TrustedKeys};
use serde_json::Value;

/// The go command's side of the pipe: what the engine wrote.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A request and, for a put, its body; or a pause between turns.
enum Ask {
    Get(u8),
    Put(u8, Vec<u8>),
    Pause(Duration),
}

/// How the runs of a test reach the remote.
struct Remote {
    memory: Arc<MemoryBlobs>,
    prefetch: bool,
    timeout: Duration,
    budget: Duration,
    namespace: &'static str,
    read_namespaces: Vec<&'static str>,
    signer: Option<Arc<SigningKey>>,
    trusted: Option<Arc<TrustedKeys>>,
    scope: &'static str,
    look_up_unnamed: bool,
}

impl Remote {
    fn new(prefetch: bool) -> Remote {
        Remote {
            memory: Arc::default(),
            prefetch,
            timeout: Duration::from_secs(5),
            budget: Duration::from_secs(60),
            namespace: "",
            read_namespaces: Vec::new(),
            signer: None,
            trusted: None,
            scope: "engine-tests",
            look_up_unnamed: true,
        }
    }

    /// The key of the first pack a run uploaded.
    fn first_pack(&self) -> String {
        self.memory
            .puts()
            .into_iter()
            .find(|key| key.contains("/packs/"))
            .expect("a pack")
    }

    /// Another runner of the same remote, with the default settings.
    fn runner(&self) -> Remote {
        Remote {
            memory: self.memory.clone(),
            ..Remote::new(self.prefetch)
        }
    }

    fn options(&self) -> RemoteOptions {
        let namespace = |name| Namespace::new(name).unwrap();
        let mut cache = RemoteCache::new(self.memory.clone(), Format::Granary)
            .in_namespace(namespace(self.namespace));
        if let Some(signer) = &self.signer {
            cache = cache.signed_by(signer.clone());
        }
        RemoteOptions {
            cache,
            read_namespaces: self.read_namespaces.iter().map(|n| namespace(n)).collect(),
            trusted: self.trusted.clone(),
            read_only: false,
            timeout: self.timeout,
            budget: self.budget,
            upload_deadline: Duration::from_secs(10),
            scopes: Scopes {
                scope: self.scope.into(),
                fallbacks: Vec::new(),
                prefetch: self.prefetch,
                look_up_unnamed: self.look_up_unnamed,
            },
        }
    }
}

/// One run of the engine on a new cache directory in `dir`, as the go
/// command drives it: the requests, then, once all are answered, `close`.
/// Returns the answers by request ID, and the summary.
fn run(dir: &tempfile::TempDir, remote: &Remote, asks: &[Ask]) -> (Vec<Value>, Summary) {
    run_in_turns(dir, remote, &[asks])
}

/// [`run`] with the requests in turns: a turn's requests go out once those
/// of the turns before are answered.
fn run_in_turns(
    dir: &tempfile::TempDir,
    remote: &Remote,
    turns: &[&[Ask]],
) -> (Vec<Value>, Summary) {
    run_on(&dir.path().join(format!("cache-{}", rand())), remote, turns)
}

/// [`run_in_turns`] on the cache directory `cache`, as a job's next go
/// command finds the first one's.
fn run_on(cache: &std::path::Path, remote: &Remote, turns: &[&[Ask]]) -> (Vec<Value>, Summary) {
    let store = Store::open(cache).unwrap();
    let (reader, mut writer) = io::pipe().unwrap();
    let output = Output::default();
    let options = Options {
        remote: Some(remote.options()),
        ..Options::default()
    };
    let engine = {
        let output = output.clone();
        std::thread::spawn(move || {
            granary_prog::run(io::BufReader::new(reader), output, store, options).unwrap()
        })
    };
    let lines = || {
        output
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    };
    let mut id = 0;
    for turn in turns {
        let mut input = Vec::new();
        for ask in *turn {
            if let Ask::Pause(pause) = ask {
                std::thread::sleep(*pause);
                continue;
            }
            id += 1;
            let (request, body) = match ask {
                Ask::Get(action) => (
                    Request::Get {
                        id,
                        action_id: Id([*action; 32]),
                    },
                    &[][..],
                ),
                Ask::Put(action, body) => (
                    Request::Put {
                        id,
                        action_id: Id([*action; 32]),
                        output_id: Id::of(body),
                        body_size: body.len() as u64,
                    },
                    &body[..],
                ),
                Ask::Pause(_) => unreachable!("paused above"),
            };
            write_request(&mut input, &request, body).unwrap();
        }
        writer.write_all(&input).unwrap();
        // The handshake, and an answer to each request so far.
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines() < id as usize + 1 {
            assert!(Instant::now() < deadline, "requests left unanswered");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    write_request(&mut writer, &Request::Close { id: 999 }, &[]).unwrap();
    drop(writer);
    let outcome = engine.join().unwrap();
    assert!(outcome.framing_error.is_none());
    let text = String::from_utf8(output.0.lock().unwrap().clone()).unwrap();
    let mut answers: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        answers.remove(0)["KnownCommands"][0],
        "get",
        "the handshake first"
    );
    assert_eq!(
        answers.pop().unwrap(),
        serde_json::json!({"ID": 999}),
        "close last"
    );
    answers.sort_by_key(|a| a["ID"].as_i64());
    assert_eq!(answers.len(), id as usize, "every request answered once");
    (answers, outcome.summary)
}

fn rand() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn is_hit(answer: &Value) -> bool {
    answer["DiskPath"].is_string() && answer["Miss"].is_null()
}

/// A writer's puts reach the remote; a fresh runner finds them there, with
/// their original put time.
#[test]
fn a_fresh_runner_hits_what_a_writer_put() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(false);
    let (stored, _) = run(&dir, &remote, &[Ask::Put(1, b"one".to_vec())]);
    assert!(stored[0]["DiskPath"].is_string());
    let (answers, summary) = run(&dir, &remote, &[Ask::Get(1), Ask::Get(2)]);
    assert!(is_hit(&answers[0]), "{answers:?}");
    assert_eq!(answers[1]["Miss"], true);
    assert_eq!((summary.remote_hits, summary.remote_misses), (1, 1));
}

/// A writer's records and manifest carry how long each output took to
/// build (from the miss to the put); a runner that hits them says what they
/// saved, whether it looked them up, prefetched them, or found them in its
/// local tier where the job's first go command put them.
#[test]
fn hits_count_what_their_builder_measured_as_saved() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(true);
    // The go command builds between its miss and its put.
    let build = Duration::from_millis(60);
    let misses: &[Ask] = &[Ask::Get(1), Ask::Get(2)];
    let puts: &[Ask] = &[Ask::Put(1, vec![1; 5000]), Ask::Put(2, vec![2; 100_000])];
    let (_, built) = run_in_turns(&dir, &remote, &[misses, &[Ask::Pause(build)], puts]);
    assert_eq!(built.rebuilds, 2, "{built:?}");
    assert_eq!(built.saved_hits, 0, "nothing was a hit");

    let looked_up = Remote {
        memory: remote.memory.clone(),
        ..Remote::new(false)
    };
    let (answers, summary) = run(&dir, &looked_up, &[Ask::Get(1), Ask::Get(2)]);
    assert!(answers.iter().all(is_hit), "{answers:?}");
    assert_eq!(summary.remote_hits, 2);
    assert_eq!(summary.saved_hits, 2, "{summary:?}");
    assert!(
        summary.saved_ms >= 2 * build.as_millis() as u64,
        "{summary:?}"
    );
    assert!(summary.saved_ms < 60_000, "{summary:?}");

    let fresh = dir.path().join("fresh");
    let (answers, first) = run_on(&fresh, &remote.runner(), &[&[Ask::Get(1)]]);
    assert!(is_hit(&answers[0]));
    assert_eq!((first.prefetch_used, first.saved_hits), (1, 1), "{first:?}");
    // The job's next go command: entry 2 is local already, fetched by the
    // prefetch of the first; only the manifest says what it cost.
    let (answers, next) = run_on(&fresh, &remote.runner(), &[&[Ask::Get(2)]]);
    assert!(is_hit(&answers[0]));
    assert_eq!((next.remote_hits, next.saved_hits), (0, 1), "{next:?}");
    assert!(next.saved_ms >= build.as_millis() as u64, "{next:?}");
}

/// Five failed requests in a row switch the remote off; after that, gets
/// are local misses at once and the remote is asked nothing more.
#[test]
fn five_failures_in_a_row_switch_the_remote_off() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(false);
    remote.memory.set_faults(Faults {
        fail: true,
        ..Faults::default()
    });
    // Five lookups at once, then seven more once they are answered.
    let first: Vec<Ask> = (1..=5).map(Ask::Get).collect();
    let then: Vec<Ask> = (6..=12).map(Ask::Get).collect();
    let (answers, summary) = run_in_turns(&dir, &remote, &[&first, &then]);
    assert!(answers.iter().all(|a| a["Miss"] == true), "{answers:?}");
    assert!(
        summary.remote_off.starts_with("5 requests failed in a row"),
        "{summary:?}"
    );
    assert_eq!(
        remote.memory.gets().len(),
        5,
        "the remote was asked after it was off: {:?}",
        remote.memory.gets()
    );
}

/// Lookups that found nothing, each within its deadline, add up against
/// the budget; past it the remote is off.
#[test]
fn slow_misses_use_up_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut remote = Remote::new(false);
    remote.budget = Duration::from_millis(500);
    remote.memory.set_faults(Faults {
        delay: Duration::from_millis(200),
        ..Faults::default()
    });
    let asks: Vec<Ask> = (1..=6).map(Ask::Get).collect();
    let started = Instant::now();
    let (_, summary) = run(&dir, &remote, &asks);
    assert!(
        summary.remote_off.contains("--remote-budget"),
        "{summary:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A lookup that takes longer than --remote-timeout is given up: a miss,
/// counted as a remote error.
#[test]
fn a_lookup_is_bounded_by_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut remote = Remote::new(false);
    remote.timeout = Duration::from_millis(200);
    remote.memory.set_faults(Faults {
        delay: Duration::from_secs(30),
        ..Faults::default()
    });
    let started = Instant::now();
    let (answers, summary) = run(&dir, &remote, &[Ask::Get(1)]);
    assert_eq!(answers[0]["Miss"], true);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(summary.remote_errors, 1, "{summary:?}");
}

/// Gets of one action while its lookup runs join it: one request.
#[test]
fn concurrent_gets_of_one_action_make_one_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(false);
    run(&dir, &remote, &[Ask::Put(7, b"seven".to_vec())]);
    remote.memory.set_faults(Faults {
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let before = remote.memory.gets().len();
    let (answers, summary) = run(&dir, &remote, &[Ask::Get(7), Ask::Get(7), Ask::Get(7)]);
    assert!(answers.iter().all(is_hit), "{answers:?}");
    assert_eq!(summary.remote_hits, 3);
    let asked: Vec<String> = remote.memory.gets()[before..]
        .iter()
        .filter(|key| key.contains("/ac/"))
        .cloned()
        .collect();
    assert_eq!(asked.len(), 1, "one lookup for three gets: {asked:?}");
}

/// A refused credential switches the remote off at once, with the advice
/// of the kind of remote that refused.
#[test]
fn a_refusal_gives_the_advice_of_its_remote() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(false);
    remote.memory.set_faults(Faults {
        deny: true,
        ..Faults::default()
    });
    let (_, summary) = run_in_turns(&dir, &remote, &[&[Ask::Get(1)], &[Ask::Get(2)]]);
    assert_eq!(
        summary.remote_off,
        "it refused our credentials; give memory a key that may read and write \
         (access denied: memory refused the credentials)"
    );
    assert_eq!(
        remote.memory.gets().len(),
        1,
        "nothing asked after the refusal"
    );
}

/// A writer publishes a manifest and a pack at close; a fresh runner with
/// the prefetch fetches the pack once and its gets wait for it instead of
/// asking for their entries one by one.
#[test]
fn gets_wait_for_the_prefetch_instead_of_asking_again() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(true);
    let puts: Vec<Ask> = (1..=20).map(|i| Ask::Put(i, vec![i; 5000])).collect();
    let (_, written) = run(&dir, &remote, &puts);
    assert_eq!(written.packs_uploaded, 1, "{written:?}");
    remote.memory.set_faults(Faults {
        delay: Duration::from_millis(100),
        ..Faults::default()
    });
    let before = remote.memory.gets().len();
    let gets: Vec<Ask> = (1..=20).map(Ask::Get).collect();
    let (answers, summary) = run(&dir, &remote, &gets);
    assert!(answers.iter().all(is_hit), "{answers:?}");
    let asked = remote.memory.gets()[before..].to_vec();
    assert!(
        asked.iter().all(|key| !key.contains("/ac/")),
        "no entry asked for alone: {asked:?}"
    );
    assert_eq!(
        asked.iter().filter(|key| key.contains("/packs/")).count(),
        1,
        "{asked:?}"
    );
    assert_eq!(summary.prefetch_fetched, 20, "{summary:?}");
}

/// With `--lookups named`, a local miss of an action no manifest names is
/// a miss at once, even if the remote holds it (another scope's job put
/// it); named ones are fetched. A run that read no manifest looks every
/// miss up.
#[test]
fn only_named_actions_are_looked_up_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(true);
    run(&dir, &remote, &[Ask::Put(1, b"one".to_vec())]);
    let other_scope = Remote {
        scope: "other",
        ..remote.runner()
    };
    run(&dir, &other_scope, &[Ask::Put(3, b"three".to_vec())]);
    let named_only = || Remote {
        look_up_unnamed: false,
        ..remote.runner()
    };
    let before = remote.memory.gets().len();
    let (answers, summary) = run(
        &dir,
        &named_only(),
        &[Ask::Get(1), Ask::Get(3), Ask::Get(4)],
    );
    assert!(is_hit(&answers[0]), "{answers:?}");
    assert_eq!(
        (&answers[1]["Miss"], &answers[2]["Miss"]),
        (&true.into(), &true.into())
    );
    assert_eq!(summary.lookups_skipped, 2, "{summary:?}");
    assert_eq!((summary.remote_hits, summary.remote_misses), (0, 0));
    let asked = remote.memory.gets()[before..].to_vec();
    assert!(asked.iter().all(|key| !key.contains("/ac/")), "{asked:?}");

    let (answers, summary) = run(&dir, &remote.runner(), &[Ask::Get(3)]);
    assert!(is_hit(&answers[0]), "all misses looked up: {answers:?}");
    assert_eq!(summary.lookups_skipped, 0);
    let no_manifest = Remote {
        scope: "new",
        ..named_only()
    };
    let (answers, summary) = run(&dir, &no_manifest, &[Ask::Get(3)]);
    assert!(is_hit(&answers[0]), "no manifest read: {answers:?}");
    assert_eq!(summary.lookups_skipped, 0);
}

/// A pull request's first job takes main's latest job as the job before:
/// its first go command, which uses a few entries of a pack that a later
/// one uses whole, names that pack instead of packing those few again.
#[test]
fn a_pull_requests_first_command_does_not_repack_what_its_later_ones_use() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(true);
    let puts = |actions: std::ops::RangeInclusive<u8>| -> Vec<Ask> {
        actions.map(|i| Ask::Put(i, vec![i; 2000])).collect()
    };
    let gets =
        |actions: std::ops::RangeInclusive<u8>| -> Vec<Ask> { actions.map(Ask::Get).collect() };
    let main = Remote {
        namespace: "main",
        ..remote.runner()
    };
    let main_job = dir.path().join("main-job");
    run_on(&main_job, &main, &[&puts(1..=4)]);
    let (_, tests) = run_on(&main_job, &main, &[&puts(10..=30)]);
    assert_eq!(tests.packs_uploaded, 1, "{tests:?}");

    let pull_request = Remote {
        namespace: "pr-1",
        read_namespaces: vec!["main"],
        ..remote.runner()
    };
    let pr_job = dir.path().join("pr-job");
    let (answers, first) = run_on(&pr_job, &pull_request, &[&gets(1..=4), &gets(10..=10)]);
    assert!(answers.iter().all(is_hit), "{answers:?}");
    assert_eq!(first.packs_uploaded, 0, "{first:?}");
    assert_eq!(
        first.manifest_earlier, 20,
        "main's job's other entries: {first:?}"
    );
    let (answers, later) = run_on(&pr_job, &pull_request, &[&gets(10..=30)]);
    assert!(answers.iter().all(is_hit), "{answers:?}");
    assert_eq!(later.packs_uploaded, 0, "{later:?}");
    assert_eq!(later.manifest_entries, 25, "{later:?}");
}

/// A damaged manifest is ignored, counted; gets go on to lookups and hit.
#[test]
fn a_damaged_manifest_costs_lookups_only() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(true);
    run(&dir, &remote, &[Ask::Put(3, b"three".to_vec())]);
    let manifest = Format::Granary.manifest_key("", "engine-tests");
    remote
        .memory
        .edit(&manifest, |bytes| bytes.truncate(bytes.len() / 2));
    let (answers, summary) = run(&dir, &remote, &[Ask::Get(3)]);
    assert!(is_hit(&answers[0]), "{answers:?}");
    assert_eq!(
        (summary.prefetch_damaged, summary.remote_hits),
        (1, 1),
        "{summary:?}"
    );
}

/// A pack cut short: what came before the cut is used, the rest looked
/// up; the damage is counted and nothing wrong is stored.
#[test]
fn a_cut_pack_costs_lookups_only() {
    let dir = tempfile::tempdir().unwrap();
    let remote = Remote::new(true);
    let puts: Vec<Ask> = (1..=10).map(|i| Ask::Put(i, vec![i; 20_000])).collect();
    run(&dir, &remote, &puts);
    let pack = remote.first_pack();
    remote.memory.edit(&pack, |bytes| {
        let half = bytes.len() / 2;
        bytes.truncate(half);
        bytes.extend_from_slice(&[0xff; 64]);
    });
    let gets: Vec<Ask> = (1..=10).map(Ask::Get).collect();
    let (answers, summary) = run(&dir, &remote, &gets);
    assert!(answers.iter().all(is_hit), "{answers:?}");
    assert_eq!(summary.prefetch_damaged, 1, "{summary:?}");
    assert!(
        summary.prefetch_fetched > 0 && summary.remote_hits > 0,
        "some from the pack, the rest looked up: {summary:?}"
    );
    assert_eq!(summary.prefetch_fetched + summary.remote_hits, 10);
}

/// With trusted keys, unsigned records are misses, counted as untrusted,
/// in lookups and in the prefetch alike; a writer with a signing key
/// replaces them as it builds, and the next trusting runner hits.
#[test]
fn untrusted_records_are_misses_until_a_signing_writer_replaces_them() {
    for prefetch in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let anyone = Remote::new(prefetch);
        run(&dir, &anyone, &[Ask::Put(1, b"forged".to_vec())]);
        let key = Arc::new(SigningKey::generate().unwrap());
        let trusted = Some(Arc::new(TrustedKeys::new([key.public()])));
        let reader = || Remote {
            trusted: trusted.clone(),
            ..anyone.runner()
        };
        let (answers, summary) = run(&dir, &reader(), &[Ask::Get(1)]);
        assert_eq!(answers[0]["Miss"], true, "prefetch {prefetch}");
        assert!(summary.untrusted >= 1, "prefetch {prefetch}: {summary:?}");
        assert_eq!(summary.remote_hits, 0);

        let writer = Remote {
            signer: Some(key.clone()),
            ..reader()
        };
        let (answers, _) = run_in_turns(
            &dir,
            &writer,
            &[&[Ask::Get(1)], &[Ask::Put(1, b"genuine".to_vec())]],
        );
        assert_eq!(answers[0]["Miss"], true);
        let (answers, summary) = run(&dir, &reader(), &[Ask::Get(1)]);
        assert!(is_hit(&answers[0]), "prefetch {prefetch}: {answers:?}");
        let path = answers[0]["DiskPath"].as_str().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"genuine");
        assert_eq!((summary.untrusted, summary.hits), (0, 1));
        if prefetch {
            // The writer's manifest is signed: the trusting runner uses it.
            assert_eq!(summary.prefetch_named, 1, "{summary:?}");
        }
    }
}

/// The prefetch checks the signatures of a pack's entries together; one
/// forged among many is refused alone, and its get goes on to a lookup of
/// the genuine record.
#[test]
fn one_forged_entry_of_a_signed_pack_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::generate().unwrap());
    let remote = Remote::new(true);
    let trusting = || Remote {
        signer: Some(key.clone()),
        trusted: Some(Arc::new(TrustedKeys::new([key.public()]))),
        ..remote.runner()
    };
    let actions = 1..=150u8;
    let puts: Vec<Ask> = actions
        .clone()
        .map(|i| Ask::Put(i, format!("output {i}").into_bytes()))
        .collect();
    run(&dir, &trusting(), &puts);
    let pack = remote.first_pack();
    // The last digit of the signature (the end of the record's header) of
    // entry 100; the entry head is its action, then the record's length.
    remote.memory.edit(&pack, |bytes| {
        let head = bytes.windows(32).position(|w| w == [100; 32]).unwrap();
        let record = head + 32 + 4;
        let end = record + bytes[record..].iter().position(|&b| b == b'\n').unwrap();
        bytes[end - 1] = if bytes[end - 1] == b'0' { b'1' } else { b'0' };
    });
    // The first get waits for its entry; while it is answered, the rest of
    // the pack arrives with no get waiting, and is checked in batches.
    let gets: Vec<Ask> = actions.skip(1).map(Ask::Get).collect();
    let (answers, summary) = run_in_turns(&dir, &trusting(), &[&[Ask::Get(1)], &gets]);
    assert!(answers.iter().all(is_hit), "{answers:?}");
    assert_eq!(summary.untrusted, 1, "{summary:?}");
    assert!(summary.signature_check_us > 0, "{summary:?}");
    assert_eq!(summary.prefetch_fetched, 149, "{summary:?}");
    assert_eq!(summary.remote_hits, 1, "the genuine record, looked up");
}

/// A pull request reads main's entries and writes only its own namespace;
/// a record signed for one namespace does not pass in another.
#[test]
fn namespaces_keep_a_pull_request_out_of_main() {
    let dir = tempfile::tempdir().unwrap();
    let main_key = Arc::new(SigningKey::generate().unwrap());
    let remote = Remote::new(false);
    let main = || Remote {
        namespace: "main",
        signer: Some(main_key.clone()),
        trusted: Some(Arc::new(TrustedKeys::new([main_key.public()]))),
        ..remote.runner()
    };
    let pull_request = || Remote {
        namespace: "pr-7",
        read_namespaces: vec!["main"],
        ..remote.runner()
    };
    run(&dir, &main(), &[Ask::Put(1, b"main's".to_vec())]);
    let (answers, _) = run_in_turns(
        &dir,
        &pull_request(),
        &[
            &[Ask::Get(1), Ask::Get(2)],
            &[Ask::Put(2, b"pr's".to_vec())],
        ],
    );
    assert!(
        is_hit(&answers[0]),
        "the pull request reads main: {answers:?}"
    );
    assert_eq!(answers[1]["Miss"], true);
    let pr_record = Format::Granary.action_key("pr-7", &Id([2; 32]));
    assert!(remote.memory.blob(&pr_record).is_some());
    let (answers, summary) = run(&dir, &main(), &[Ask::Get(2)]);
    assert_eq!(
        answers[0]["Miss"], true,
        "main never sees the pull request's"
    );
    assert_eq!(summary.untrusted, 0, "it is not even there to refuse");
    let (answers, _) = run(&dir, &pull_request(), &[Ask::Get(2)]);
    assert!(is_hit(&answers[0]), "the pull request reads its own");

    // A record main signed, copied under another namespace's key (or the
    // other way round), is refused: the namespace is part of what is signed.
    let main_record = Format::Granary.action_key("main", &Id([1; 32]));
    let copied = Format::Granary.action_key("staging", &Id([1; 32]));
    remote
        .memory
        .insert(&copied, remote.memory.blob(&main_record).unwrap());
    let staging = Remote {
        namespace: "staging",
        ..main()
    };
    let (answers, summary) = run(&dir, &staging, &[Ask::Get(1)]);
    assert_eq!(answers[0]["Miss"], true);
    assert_eq!(summary.untrusted, 1);
}

/// Rotation: a reader that trusts the old and the new key takes what either
/// signed, one that trusts only the new refuses the old's; a signature
/// altered in the remote is refused.
#[test]
fn keys_rotate_and_altered_signatures_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        Arc::new(SigningKey::generate().unwrap()),
        Arc::new(SigningKey::generate().unwrap()),
    );
    let remote = Remote::new(false);
    let writer = |key: &Arc<SigningKey>| Remote {
        signer: Some(key.clone()),
        trusted: Some(Arc::new(TrustedKeys::new([key.public()]))),
        ..remote.runner()
    };
    run(
        &dir,
        &writer(&old),
        &[Ask::Put(1, b"by the old key".to_vec())],
    );
    run(
        &dir,
        &writer(&new),
        &[Ask::Put(2, b"by the new key".to_vec())],
    );
    let reader = |keys: &[&Arc<SigningKey>]| Remote {
        trusted: Some(Arc::new(TrustedKeys::new(keys.iter().map(|k| k.public())))),
        ..remote.runner()
    };
    let (answers, summary) = run(&dir, &reader(&[&old, &new]), &[Ask::Get(1), Ask::Get(2)]);
    assert!(is_hit(&answers[0]) && is_hit(&answers[1]), "{answers:?}");
    assert_eq!(summary.untrusted, 0);
    let (answers, summary) = run(&dir, &reader(&[&new]), &[Ask::Get(1), Ask::Get(2)]);
    assert_eq!(answers[0]["Miss"], true, "the old key is no longer trusted");
    assert!(is_hit(&answers[1]));
    assert_eq!(summary.untrusted, 1);

    // One bit of the signature (the header's last field) flipped.
    let key = Format::Granary.action_key("", &Id([2; 32]));
    remote.memory.edit(&key, |record| {
        let end = record.iter().position(|&b| b == b'\n').unwrap();
        record[end - 1] = if record[end - 1] == b'0' { b'1' } else { b'0' };
    });
    let (answers, summary) = run(&dir, &reader(&[&old, &new]), &[Ask::Get(2)]);
    assert_eq!(answers[0]["Miss"], true);
    assert_eq!(summary.untrusted, 1);
}
