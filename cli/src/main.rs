//! `embed-jsonl`: embeds a JSONL file through a qwen3-embed service into JSONL or `.npy`,
//! resumably. See `embed-jsonl --help` and docs/operations.md.

use std::process::ExitCode;

use clap::Parser;
use embed_jsonl::{Options, run};

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    let outcome = tokio::select! {
        outcome = run(&options) => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "embed-jsonl: interrupted; every row written so far is kept. Run the same \
                 command again to resume."
            );
            return ExitCode::from(130);
        }
    };
    match outcome {
        Ok(summary) => {
            let dims = summary.dims.map_or(String::new(), |d| format!(" x {d}"));
            let state = if summary.complete {
                "done"
            } else {
                "stopped at --limit; run again to continue"
            };
            eprintln!(
                "embed-jsonl: {} rows embedded now, {}{dims} in {} ({state})",
                summary.embedded,
                summary.rows,
                options.output.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("embed-jsonl: {error}");
            ExitCode::FAILURE
        }
    }
}
