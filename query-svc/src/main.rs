//! `query-svc [-conf PATH] [COMMAND]`
//!
//! Without a command it serves. Commands, run beside the running service:
//! - `rebuild-read-model`: rebuild the read model from the ledger and swap it in;
//! - `reconcile [--repair]`: compare the read model with the write model, print every
//!   difference, exit 1 when there is any (after repairing them with `--repair`);
//! - `dlq list` / `dlq replay [SEQUENCE...]`: the dead-letter stream.

use std::time::Duration;

use query_svc::{
    app::Application,
    cache::SnapshotCache,
    ops::{dlq, rebuild, reconcile},
};
use shared::{bus::BusNames, clock::Clock, config::Settings, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let settings = Settings::load(Settings::path_from_args(args.iter().cloned()).as_ref())?;
    telemetry::init(&settings.telemetry);
    let command: Vec<&str> = command_words(&args);
    match command.as_slice() {
        [] | ["serve"] => {
            let app = Application::build(&settings, Clock::system()).await?;
            app.run_until_stopped(shared::shutdown::signal()).await
        }
        ["rebuild-read-model"] => {
            let pool = shared::db::connect_lazy(&settings.database)?;
            let report =
                rebuild::rebuild(&pool, settings.billing.zone()?, chrono::Utc::now()).await?;
            println!("{report:?}");
            Ok(())
        }
        ["reconcile", flags @ ..] => {
            let repair = flags.contains(&"--repair");
            let pool = shared::db::connect_lazy(&settings.database)?;
            let cache = SnapshotCache::new(
                settings.redis.url.expose(),
                &settings.redis.key_prefix,
                Duration::from_secs(settings.query.snapshot_ttl_secs),
            )?;
            let options = reconcile::Options {
                repair,
                settle: Duration::from_secs(2),
            };
            let differences =
                reconcile::reconcile(&pool, Some(&cache), settings.billing.zone()?, &options)
                    .await?;
            for difference in &differences {
                println!("{difference}");
            }
            println!(
                "{} difference(s){}",
                differences.len(),
                if repair && !differences.is_empty() {
                    ", repaired"
                } else {
                    ""
                }
            );
            std::process::exit(if differences.is_empty() { 0 } else { 1 });
        }
        ["dlq", "list"] => {
            let js = async_nats::jetstream::new(shared::bus::connect(&settings.nats).await?);
            let letters = dlq::list(&js, &BusNames::from_settings(&settings.nats)).await?;
            for letter in &letters {
                println!(
                    "{}\t{}\t{}\t{} bytes\t{}",
                    letter.sequence,
                    letter.time,
                    letter.original_subject,
                    letter.bytes,
                    letter.reason
                );
            }
            println!("{} dead letter(s)", letters.len());
            Ok(())
        }
        ["dlq", "replay", sequences @ ..] => {
            let sequences = sequences
                .iter()
                .map(|s| s.parse::<u64>())
                .collect::<Result<Vec<_>, _>>()?;
            let js = async_nats::jetstream::new(shared::bus::connect(&settings.nats).await?);
            let replayed =
                dlq::replay(&js, &BusNames::from_settings(&settings.nats), &sequences).await?;
            println!("replayed {} dead letter(s): {replayed:?}", replayed.len());
            Ok(())
        }
        other => {
            anyhow::bail!("unknown command {other:?}; see the header of query-svc/src/main.rs")
        }
    }
}

/// The words that are not the program or the configuration flag.
fn command_words(args: &[String]) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "-conf" || arg == "--config" {
            rest.next();
        } else if !arg.starts_with("--config=") {
            words.push(arg.as_str());
        }
    }
    words
}
