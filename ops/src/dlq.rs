//! The dead-letter stream: events query-svc could not project, kept for operators. `list` shows
//! them; `replay` publishes them again on their original subjects (with new message ids, since
//! JetStream may still remember the old ones) and removes them from the dead-letter stream once
//! the events stream has acknowledged them.

use async_nats::jetstream::{self, message::PublishMessage};
use shared::bus::{self, BusNames};

/// One dead letter, as `list` shows it.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub sequence: u64,
    pub subject: String,
    pub original_subject: String,
    pub reason: String,
    pub bytes: usize,
    pub time: String,
}

async fn dead_letters(
    js: &jetstream::Context,
    names: &BusNames,
) -> anyhow::Result<(
    jetstream::stream::Stream,
    Vec<(DeadLetter, jetstream::message::StreamMessage)>,
)> {
    let mut stream = js.get_stream(names.dlq_stream()).await?;
    let state = stream.info().await?.state.clone();
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok((stream, letters));
    }
    for sequence in state.first_sequence..=state.last_sequence {
        // Replayed letters leave gaps.
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.to_string())
                .unwrap_or_default()
        };
        let letter = DeadLetter {
            sequence,
            subject: message.subject.to_string(),
            original_subject: header(bus::ORIGINAL_SUBJECT_HEADER),
            reason: header(bus::DEAD_LETTER_REASON_HEADER),
            bytes: message.payload.len(),
            time: message.time.to_string(),
        };
        letters.push((letter, message));
    }
    Ok((stream, letters))
}

pub async fn list(js: &jetstream::Context, names: &BusNames) -> anyhow::Result<Vec<DeadLetter>> {
    Ok(dead_letters(js, names)
        .await?
        .1
        .into_iter()
        .map(|(letter, _)| letter)
        .collect())
}

/// Replays the dead letters with these sequence numbers, or all of them when `sequences` is
/// empty. Returns the sequences replayed.
pub async fn replay(
    js: &jetstream::Context,
    names: &BusNames,
    sequences: &[u64],
) -> anyhow::Result<Vec<u64>> {
    let (stream, letters) = dead_letters(js, names).await?;
    let mut replayed = Vec::new();
    for (letter, message) in letters {
        if !sequences.is_empty() && !sequences.contains(&letter.sequence) {
            continue;
        }
        if letter.original_subject.is_empty() {
            anyhow::bail!("dead letter {} has no original subject", letter.sequence);
        }
        let mut publish = PublishMessage::build()
            .payload(message.payload.clone())
            .message_id(format!("replay:{}:{}", names.dlq_stream(), letter.sequence));
        // A letter that is a whole batch message goes back as a batch.
        if let Some(count) = message.headers.get(shared::bus::BATCH_HEADER) {
            publish = publish.header(shared::bus::BATCH_HEADER, count.as_str());
        }
        js.send_publish(letter.original_subject.clone(), publish)
            .await?
            .await?;
        stream.delete_message(letter.sequence).await?;
        replayed.push(letter.sequence);
    }
    Ok(replayed)
}
