//! The known-agent table and the classifier that scores a process's
//! fingerprint against it.
//!
//! The table is data: each agent type lists the signals that point to it,
//! each with a weight. A process is classified when the weights of the
//! signals it shows reach [`CONFIDENT`]. Names are cheap to fake, so a name
//! alone never reaches it; a classification always carries the evidence
//! that produced it.

use crate::providers::provider_for_server_name;

/// Score at which a classification is confident.
pub const CONFIDENT: u32 = 60;

/// The agent type of processes no signature claims.
pub const UNKNOWN: &str = "unknown";

/// What a signal looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matcher {
    /// The executable's file name, exactly (case-insensitive).
    ExeName(&'static str),
    /// A directory of the executable's path contains this text.
    ExeDirContains(&'static str),
    /// Some argument contains this text (scripts run by an interpreter).
    ArgvContains(&'static str),
    /// An environment variable of exactly this name is set.
    EnvName(&'static str),
    /// An environment variable whose name starts with this is set.
    EnvPrefix(&'static str),
    /// The process read a file whose path contains this text (a loaded module).
    ReadPathContains(&'static str),
    /// The process created or wrote a file with this name.
    WroteFileNamed(&'static str),
    /// The process's TLS server name belongs to this provider.
    TlsProvider(&'static str),
}

/// One signal of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub matcher: Matcher,
    /// Contribution to the score when the signal is present.
    pub weight: u32,
}

const fn signal(matcher: Matcher, weight: u32) -> Signal {
    Signal { matcher, weight }
}

/// What identifies one agent type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentSignature {
    /// Agent type as used in policies and events.
    pub agent_type: &'static str,
    pub signals: &'static [Signal],
    /// LLM providers (see `providers`) this agent talks to.
    pub expected_providers: &'static [&'static str],
    /// Further domains (and their subdomains) this agent talks to.
    pub expected_domains: &'static [&'static str],
    /// TLS to any other host is a fingerprint mismatch. Off for frameworks,
    /// whose agents legitimately call arbitrary tools.
    pub strict_egress: bool,
}

use Matcher::*;

/// Environment variables that mean "this process holds an LLM API key".
const LLM_KEY_WEIGHT: u32 = 15;

/// The known agents.
pub const KNOWN_AGENTS: &[AgentSignature] = &[
    AgentSignature {
        agent_type: "cursor",
        signals: &[
            signal(ExeName("cursor"), 25),
            signal(ExeName("cursor-agent"), 30),
            signal(ExeDirContains("cursor"), 30),
            signal(EnvName("CURSOR_TRACE_ID"), 45),
            signal(EnvPrefix("CURSOR_"), 30),
            signal(TlsProvider("cursor"), 30),
        ],
        expected_providers: &["cursor", "openai", "anthropic", "google"],
        expected_domains: &["cursor.sh", "cursor.com", "cursorapi.com", "github.com", "githubusercontent.com"],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "copilot",
        signals: &[
            signal(ExeName("github-copilot-language-server"), 45),
            signal(ExeDirContains("github.copilot"), 30),
            signal(ArgvContains("@github/copilot-language-server"), 60),
            signal(ArgvContains("github.copilot"), 30),
            signal(EnvPrefix("GITHUB_COPILOT_"), 30),
            signal(TlsProvider("github-copilot"), 30),
        ],
        expected_providers: &["github-copilot", "openai", "anthropic"],
        expected_domains: &["github.com", "githubusercontent.com", "githubcopilot.com", "visualstudio.com"],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "claude-code",
        signals: &[
            signal(ExeName("claude"), 30),
            signal(ExeDirContains("/claude/versions/"), 35),
            signal(ExeDirContains("@anthropic-ai/claude-code"), 35),
            signal(ArgvContains("@anthropic-ai/claude-code"), 60),
            signal(EnvName("CLAUDECODE"), 45),
            signal(EnvPrefix("CLAUDE_CODE_"), 45),
            signal(EnvName("ANTHROPIC_API_KEY"), LLM_KEY_WEIGHT),
            signal(TlsProvider("anthropic"), 15),
        ],
        expected_providers: &["anthropic", "aws-bedrock", "google"],
        expected_domains: &["claude.ai", "anthropic.com", "statsig.com", "sentry.io"],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "codex",
        signals: &[
            signal(ExeName("codex"), 30),
            signal(ExeDirContains("@openai/codex"), 35),
            signal(ArgvContains("@openai/codex"), 60),
            signal(EnvName("CODEX_HOME"), 35),
            signal(EnvName("OPENAI_API_KEY"), LLM_KEY_WEIGHT),
            signal(TlsProvider("openai"), 15),
        ],
        expected_providers: &["openai", "azure-openai"],
        expected_domains: &["chatgpt.com", "openai.com"],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "autogen",
        signals: &[
            signal(ReadPathContains("/site-packages/autogen"), 50),
            signal(ReadPathContains("/site-packages/pyautogen"), 50),
            signal(EnvName("OPENAI_API_KEY"), LLM_KEY_WEIGHT),
            signal(EnvName("ANTHROPIC_API_KEY"), LLM_KEY_WEIGHT),
            signal(EnvName("AZURE_OPENAI_API_KEY"), LLM_KEY_WEIGHT),
        ],
        expected_providers: &[],
        expected_domains: &[],
        strict_egress: false,
    },
    AgentSignature {
        agent_type: "langgraph",
        signals: &[
            signal(ReadPathContains("/site-packages/langgraph"), 50),
            signal(EnvName("LANGGRAPH_API_URL"), 30),
            signal(EnvName("OPENAI_API_KEY"), LLM_KEY_WEIGHT),
            signal(EnvName("ANTHROPIC_API_KEY"), LLM_KEY_WEIGHT),
            signal(EnvName("LANGCHAIN_API_KEY"), LLM_KEY_WEIGHT),
        ],
        expected_providers: &[],
        expected_domains: &[],
        strict_egress: false,
    },
    AgentSignature {
        agent_type: "aider",
        signals: &[
            signal(ExeName("aider"), 30),
            signal(ReadPathContains("/site-packages/aider/"), 40),
            signal(WroteFileNamed(".aider.chat.history.md"), 45),
            signal(WroteFileNamed(".aider.input.history"), 40),
            signal(EnvPrefix("AIDER_"), 35),
            signal(EnvName("OPENAI_API_KEY"), LLM_KEY_WEIGHT),
            signal(EnvName("ANTHROPIC_API_KEY"), LLM_KEY_WEIGHT),
        ],
        expected_providers: &["openai", "anthropic", "google", "mistral", "deepseek", "openrouter", "groq"],
        expected_domains: &["pypi.org", "github.com"],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "cline",
        signals: &[
            signal(ExeDirContains("saoudrizwan.claude-dev"), 40),
            signal(ArgvContains("saoudrizwan.claude-dev"), 40),
            signal(EnvPrefix("CLINE_"), 35),
        ],
        expected_providers: &["anthropic", "openai", "openrouter", "google", "aws-bedrock", "mistral", "deepseek"],
        expected_domains: &["cline.bot"],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "gemini-cli",
        signals: &[
            signal(ExeName("gemini"), 30),
            signal(ExeDirContains("@google/gemini-cli"), 35),
            signal(ArgvContains("@google/gemini-cli"), 60),
            signal(EnvName("GEMINI_API_KEY"), 30),
            signal(EnvName("GEMINI_CLI"), 45),
            signal(TlsProvider("google"), 15),
        ],
        expected_providers: &["google"],
        expected_domains: &["googleapis.com", "google.com"],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "opencode",
        signals: &[
            signal(ExeName("opencode"), 30),
            signal(ExeDirContains("opencode-ai"), 35),
            signal(ArgvContains("opencode-ai"), 60),
            signal(EnvPrefix("OPENCODE_"), 35),
        ],
        expected_providers: &["anthropic", "openai", "google", "openrouter", "groq", "xai"],
        expected_domains: &["opencode.ai", "models.dev"],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "goose",
        signals: &[signal(ExeName("goose"), 30), signal(ExeDirContains("goose"), 20), signal(EnvPrefix("GOOSE_"), 40)],
        expected_providers: &["anthropic", "openai", "google", "openrouter", "groq", "databricks"],
        expected_domains: &[],
        strict_egress: true,
    },
    AgentSignature {
        agent_type: "continue",
        signals: &[
            signal(ExeDirContains("continue.continue"), 40),
            signal(ArgvContains("continue.continue"), 40),
            signal(EnvPrefix("CONTINUE_"), 30),
        ],
        expected_providers: &["anthropic", "openai", "mistral", "google", "ollama"],
        expected_domains: &["continue.dev"],
        strict_egress: true,
    },
];

/// The environment variable names the classifier looks at: the names of
/// every `EnvName` signal and the prefixes of every `EnvPrefix` signal.
/// Processes' other variables are never kept, and values never are.
pub fn is_marker_env_name(name: &str) -> bool {
    KNOWN_AGENTS.iter().flat_map(|a| a.signals).any(|s| match s.matcher {
        EnvName(wanted) => name == wanted,
        EnvPrefix(prefix) => name.starts_with(prefix),
        _ => false,
    })
}

/// Everything known about a process that classification looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Absolute path of the executable.
    pub exe: String,
    /// Arguments (bounded).
    pub argv: Vec<String>,
    /// Names (never values) of marker environment variables.
    pub env_names: Vec<String>,
    /// Paths of module files the process read (bounded, matches only).
    pub read_paths: Vec<String>,
    /// Names of files the process created or wrote (bounded, matches only).
    pub written_names: Vec<String>,
    /// The first TLS server name the process used.
    pub first_sni: Option<String>,
}

/// One signal found in a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Signal kind, e.g. `env`, `exe_name`.
    pub signal: &'static str,
    /// What matched, e.g. `CURSOR_TRACE_ID` (a name, never a value).
    pub detail: String,
    pub weight: u32,
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}={}", self.signal, self.detail, self.weight)
    }
}

/// The outcome for one agent type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// The best-scoring agent type, or [`UNKNOWN`] when nothing matched.
    pub agent_type: &'static str,
    /// Sum of the matched signals' weights, capped at 100.
    pub confidence: u32,
    pub evidence: Vec<Evidence>,
}

impl Classification {
    /// A classification with no evidence.
    pub fn unknown() -> Self {
        Self { agent_type: UNKNOWN, confidence: 0, evidence: Vec::new() }
    }

    /// Strong enough to act on.
    pub fn is_confident(&self) -> bool {
        self.agent_type != UNKNOWN && self.confidence >= CONFIDENT
    }

    /// The evidence as one line: `signal:detail=weight,...`.
    pub fn evidence_text(&self) -> String {
        self.evidence.iter().map(Evidence::to_string).collect::<Vec<_>>().join(",")
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The evidence a signal finds in a fingerprint, if any.
fn evidence(matcher: Matcher, fp: &Fingerprint) -> Option<(&'static str, String)> {
    match matcher {
        ExeName(name) => file_name(&fp.exe).eq_ignore_ascii_case(name).then(|| ("exe_name", name.to_owned())),
        ExeDirContains(text) => {
            dir_of(&fp.exe).to_ascii_lowercase().contains(text).then(|| ("exe_dir", text.to_owned()))
        }
        ArgvContains(text) => fp.argv.iter().any(|a| a.contains(text)).then(|| ("argv", text.to_owned())),
        EnvName(name) => fp.env_names.iter().any(|n| n == name).then(|| ("env", name.to_owned())),
        EnvPrefix(prefix) => fp.env_names.iter().find(|n| n.starts_with(prefix)).map(|n| ("env", n.clone())),
        ReadPathContains(text) => fp.read_paths.iter().any(|p| p.contains(text)).then(|| ("module", text.to_owned())),
        WroteFileNamed(name) => fp.written_names.iter().any(|n| n == name).then(|| ("wrote", name.to_owned())),
        TlsProvider(provider) => fp
            .first_sni
            .as_deref()
            .filter(|sni| provider_for_server_name(sni) == Some(provider))
            .map(|sni| ("tls", sni.to_owned())),
    }
}

/// Scores a fingerprint against one signature.
pub fn score(signature: &AgentSignature, fp: &Fingerprint) -> Classification {
    let mut found: Vec<Evidence> = Vec::new();
    for signal in signature.signals {
        if let Some((kind, detail)) = evidence(signal.matcher, fp) {
            // Two signals finding the same thing (an env name matched by
            // name and by prefix) count once, at the higher weight.
            match found.iter_mut().find(|e| e.signal == kind && e.detail == detail) {
                Some(existing) => existing.weight = existing.weight.max(signal.weight),
                None => found.push(Evidence { signal: kind, detail, weight: signal.weight }),
            }
        }
    }
    let confidence = found.iter().map(|e| e.weight).sum::<u32>().min(100);
    Classification { agent_type: signature.agent_type, confidence, evidence: found }
}

/// The best classification of a fingerprint. Ties go to the table order.
/// A fingerprint matching nothing is [`UNKNOWN`]; one whose best match is
/// below [`CONFIDENT`] keeps that match and its evidence, so operators can
/// see why it was not classified.
pub fn classify(fp: &Fingerprint) -> Classification {
    KNOWN_AGENTS
        .iter()
        .map(|signature| score(signature, fp))
        .filter(|c| c.confidence > 0)
        .fold(None::<Classification>, |best, c| match best {
            Some(b) if b.confidence >= c.confidence => Some(b),
            _ => Some(c),
        })
        .unwrap_or_else(Classification::unknown)
}

/// The signature of an agent type.
pub fn signature(agent_type: &str) -> Option<&'static AgentSignature> {
    KNOWN_AGENTS.iter().find(|a| a.agent_type == agent_type)
}

/// Why a TLS server name contradicts an agent's fingerprint, if it does.
pub fn egress_mismatch(agent_type: &str, server_name: &str) -> Option<String> {
    let signature = signature(agent_type)?;
    if !signature.strict_egress {
        return None;
    }
    let host = server_name.trim_end_matches('.').to_ascii_lowercase();
    let provider_ok = provider_for_server_name(&host).is_some_and(|p| signature.expected_providers.contains(&p));
    let domain_ok = signature
        .expected_domains
        .iter()
        .any(|d| host == *d || host.strip_suffix(d).is_some_and(|rest| rest.ends_with('.')));
    (!provider_ok && !domain_ok).then(|| format!("tls to {host} is not an expected destination for {agent_type}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(exe: &str, argv: &[&str], env: &[&str]) -> Fingerprint {
        Fingerprint {
            exe: exe.to_owned(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env_names: env.iter().map(|s| s.to_string()).collect(),
            ..Fingerprint::default()
        }
    }

    #[test]
    fn seed_stand_ins_are_classified() {
        let cases = [
            (fp("/opt/cursor/bin/cursor-helper", &[], &["CURSOR_TRACE_ID"]), "cursor"),
            (
                fp("/usr/bin/node", &["node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"], &[]),
                "claude-code",
            ),
            (fp("/home/u/.local/share/claude/versions/1.0.0/claude", &["claude"], &[]), "claude-code"),
            (
                fp("/home/u/.vscode/extensions/github.copilot-1.0/dist/github-copilot-language-server", &[], &[]),
                "copilot",
            ),
            (fp("/usr/lib/node_modules/@openai/codex/bin/codex", &["codex"], &[]), "codex"),
            (
                fp(
                    "/x/.vscode/extensions/saoudrizwan.claude-dev-3.1/bin/helper",
                    &["/x/.vscode/extensions/saoudrizwan.claude-dev-3.1/bin/helper"],
                    &[],
                ),
                "cline",
            ),
        ];
        for (fingerprint, want) in cases {
            let c = classify(&fingerprint);
            assert_eq!(c.agent_type, want, "{fingerprint:?} -> {c:?}");
            assert!(c.is_confident(), "{want}: {c:?}");
        }
        let mut autogen = fp("/usr/bin/python3.11", &["python3", "agent.py"], &["OPENAI_API_KEY"]);
        autogen.read_paths.push("/venv/lib/python3.11/site-packages/autogen/__init__.py".to_owned());
        let c = classify(&autogen);
        assert_eq!((c.agent_type, c.is_confident()), ("autogen", true), "{c:?}");
        let mut aider = fp("/home/u/.local/bin/aider", &["aider"], &[]);
        aider.written_names.push(".aider.chat.history.md".to_owned());
        assert!(classify(&aider).is_confident());
    }

    #[test]
    fn a_name_alone_is_not_confident() {
        let c = classify(&fp("/tmp/x/cursor", &["cursor"], &[]));
        assert_eq!(c.agent_type, "cursor");
        assert!(!c.is_confident(), "{c:?}");
        assert_eq!(c.evidence_text(), "exe_name:cursor=25");
        for plain in [fp("/usr/bin/ls", &["ls"], &[]), fp("/usr/bin/python3", &["python3", "-c", "pass"], &[])] {
            assert_eq!(classify(&plain), Classification::unknown());
        }
        // An LLM key alone says nothing about which agent.
        let key_only = classify(&fp("/usr/bin/bash", &["bash"], &["OPENAI_API_KEY"]));
        assert!(!key_only.is_confident(), "{key_only:?}");
    }

    #[test]
    fn marker_env_names() {
        assert!(is_marker_env_name("CURSOR_TRACE_ID"));
        assert!(is_marker_env_name("CLAUDE_CODE_ENTRYPOINT"));
        assert!(is_marker_env_name("OPENAI_API_KEY"));
        assert!(!is_marker_env_name("HOME"));
        assert!(!is_marker_env_name("PATH"));
    }

    #[test]
    fn egress_mismatches() {
        assert!(egress_mismatch("cursor", "evil.example.com").is_some());
        assert_eq!(egress_mismatch("cursor", "api2.cursor.sh"), None);
        assert_eq!(egress_mismatch("cursor", "api.openai.com"), None);
        assert_eq!(egress_mismatch("autogen", "evil.example.com"), None, "frameworks call arbitrary tools");
        assert_eq!(egress_mismatch("unknown", "evil.example.com"), None);
    }
}
