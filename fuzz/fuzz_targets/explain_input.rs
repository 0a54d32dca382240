//! Feeds arbitrary bytes to `granary explain`'s readers: as a record read
//! from a remote (a hostile one may send anything under the record's key),
//! as lines of the go command's stderr, and the two records compared. None
//! may panic; a record that decodes encodes and decodes to itself.
#![no_main]

use granary_explain::{Observed, Record, Recorded, explain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut observed = Observed::default();
    for line in text.lines() {
        observed.line(line);
    }
    observed.finish();
    for line in text.lines() {
        observed.action_of(line);
    }

    // The lines as the inputs of two runs of one action, compared.
    let inputs: Vec<String> = text.lines().map(str::to_owned).collect();
    let (old, new) = inputs.split_at(inputs.len() / 2);
    let mut record = Record::new("fuzz");
    record
        .actions
        .insert("build p".into(), vec![Recorded::new(1, "a", old.to_vec())]);
    let missed = [("build p".to_owned(), Recorded::new(2, "b", new.to_vec()))];
    let source = granary_explain::Source {
        label: "fuzz".into(),
        record,
    };
    for explained in explain(&missed, &[source]) {
        explained.render(3, 5);
    }

    if let Ok(record) = Record::decode(data) {
        assert_eq!(Record::decode(&record.encode()).unwrap(), record);
    }
});
