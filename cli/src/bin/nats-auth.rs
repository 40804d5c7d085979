//! `nats-auth`: writes the NATS identities of a qwen3-embed deployment, one NKey user per
//! role with its subject permissions (`auth.conf`, a nats-server configuration include) and
//! one seed file per role. See `nats-auth --help` and docs/operations.md, "Security".

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use embed_jsonl::nats_auth::{
    AUTH_CONF, DEFAULT_CLIENT, RoutedModels, SeedState, Settings, generate,
};

/// Writes NATS credentials for every role of a qwen3-embed deployment: `auth.conf` (include
/// it in nats-server's configuration) and `<role>.nk` (the NKey seed each process reads
/// through `[nats] nkey_file`, with `[nats] identity` set to the role). Existing seeds are
/// kept; `--rotate ROLE` replaces one.
#[derive(Debug, Parser)]
#[command(name = "nats-auth", version)]
struct Options {
    /// Directory for auth.conf and the seeds (created with mode 0700).
    #[arg(long)]
    out: PathBuf,
    /// The deployment's subject prefix (`[nats] subject_prefix`).
    #[arg(long, default_value = common::subjects::DEFAULT_PREFIX)]
    prefix: String,
    /// An external client identity (repeatable): it may request embeddings and reranking
    /// and read its own inbox, nothing else.
    #[arg(long = "client", default_values_t = [DEFAULT_CLIENT.to_string()])]
    clients: Vec<String>,
    /// Replaces this role's seed (repeatable): gateway, tokenizer, gpu, rerank-tokenizer,
    /// rerank-gpu, operator or a client.
    #[arg(long)]
    rotate: Vec<String>,
    /// An embedding model served on subjects of its own (repeatable), by the name its
    /// workers report (`--model-name`; workers with `[nats] model_subjects = true`): the
    /// tokenizer and gpu roles may serve it, the gateway and clients request it. The
    /// default model needs none.
    #[arg(long = "model", value_name = "NAME")]
    models: Vec<String>,
    /// A reranker served on subjects of its own (repeatable), as `--model` for the
    /// rerank-tokenizer and rerank-gpu roles.
    #[arg(long = "rerank-model", value_name = "NAME")]
    rerank_models: Vec<String>,
}

fn main() -> ExitCode {
    let options = Options::parse();
    let settings = Settings {
        out: options.out,
        prefix: options.prefix,
        clients: options.clients,
        rotate: options.rotate,
        models: RoutedModels {
            embed: options.models,
            rerank: options.rerank_models,
        },
    };
    match generate(&settings) {
        Ok(generated) => {
            for g in &generated {
                let state = match g.seed {
                    SeedState::Created => "created",
                    SeedState::Kept => "kept",
                    SeedState::Rotated => "ROTATED",
                };
                println!(
                    "nats-auth: {:<18} {} {state:<8} {}",
                    g.role,
                    g.public_key,
                    g.seed_file.display()
                );
            }
            println!(
                "nats-auth: wrote {}",
                settings.out.join(AUTH_CONF).display()
            );
            if generated.iter().any(|g| g.seed == SeedState::Rotated) {
                println!(
                    "nats-auth: reload nats-server (nats-server --signal reload, or SIGHUP), \
                     then restart the rotated roles' processes"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nats-auth: {e}");
            ExitCode::from(2)
        }
    }
}
