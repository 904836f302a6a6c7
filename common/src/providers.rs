//! Which LLM provider a TLS server name belongs to.
//!
//! TLS events carry a `provider` tag derived from the SNI. The table is data:
//! adding a provider is adding a row, not a code path.

/// How a row of the table matches a server name (already lowercased, with no
/// trailing dot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostMatch {
    /// The domain itself or any subdomain of it.
    Domain(&'static str),
    /// Names that start with the first part and end with the second, such as
    /// regional endpoints (`bedrock-runtime.<region>.amazonaws.com`).
    PrefixSuffix(&'static str, &'static str),
}

impl HostMatch {
    fn matches(self, host: &str) -> bool {
        match self {
            HostMatch::Domain(domain) => {
                host == domain || host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.'))
            }
            HostMatch::PrefixSuffix(prefix, suffix) => {
                host.len() > prefix.len() + suffix.len() && host.starts_with(prefix) && host.ends_with(suffix)
            }
        }
    }
}

/// The provider table, most specific rows first: the first match wins.
const PROVIDERS: &[(HostMatch, &str)] = &[
    (HostMatch::Domain("openai.azure.com"), "azure-openai"),
    (HostMatch::Domain("openai.com"), "openai"),
    (HostMatch::Domain("chatgpt.com"), "openai"),
    (HostMatch::Domain("anthropic.com"), "anthropic"),
    (HostMatch::Domain("claude.ai"), "anthropic"),
    (HostMatch::Domain("mistral.ai"), "mistral"),
    (HostMatch::Domain("generativelanguage.googleapis.com"), "google"),
    (HostMatch::Domain("aiplatform.googleapis.com"), "google"),
    (HostMatch::PrefixSuffix("", "-aiplatform.googleapis.com"), "google"),
    (HostMatch::PrefixSuffix("bedrock-runtime.", ".amazonaws.com"), "aws-bedrock"),
    (HostMatch::PrefixSuffix("bedrock.", ".amazonaws.com"), "aws-bedrock"),
    (HostMatch::Domain("cohere.ai"), "cohere"),
    (HostMatch::Domain("cohere.com"), "cohere"),
    (HostMatch::Domain("groq.com"), "groq"),
    (HostMatch::Domain("together.xyz"), "together"),
    (HostMatch::Domain("together.ai"), "together"),
    (HostMatch::Domain("deepseek.com"), "deepseek"),
    (HostMatch::Domain("x.ai"), "xai"),
    (HostMatch::Domain("perplexity.ai"), "perplexity"),
    (HostMatch::Domain("openrouter.ai"), "openrouter"),
    (HostMatch::Domain("fireworks.ai"), "fireworks"),
    (HostMatch::Domain("replicate.com"), "replicate"),
    (HostMatch::Domain("huggingface.co"), "huggingface"),
    (HostMatch::Domain("githubcopilot.com"), "github-copilot"),
    (HostMatch::Domain("copilot-proxy.githubusercontent.com"), "github-copilot"),
    (HostMatch::Domain("cursor.sh"), "cursor"),
    (HostMatch::Domain("cursor.com"), "cursor"),
];

/// Returns the LLM provider serving `server_name`, if it is a known one.
///
/// Matching ignores ASCII case and a trailing dot, as DNS does.
pub fn provider_for_server_name(server_name: &str) -> Option<&'static str> {
    let trimmed = server_name.strip_suffix('.').unwrap_or(server_name);
    if trimmed.is_empty() {
        return None;
    }
    let host = trimmed.to_ascii_lowercase();
    PROVIDERS.iter().find(|(pattern, _)| pattern.matches(&host)).map(|&(_, provider)| provider)
}

#[cfg(test)]
mod tests {
    use super::provider_for_server_name as provider;

    #[test]
    fn known_hosts_map_to_their_provider() {
        assert_eq!(provider("api.openai.com"), Some("openai"));
        assert_eq!(provider("API.OpenAI.com."), Some("openai"));
        assert_eq!(provider("api.anthropic.com"), Some("anthropic"));
        assert_eq!(provider("api.mistral.ai"), Some("mistral"));
        assert_eq!(provider("generativelanguage.googleapis.com"), Some("google"));
        assert_eq!(provider("us-central1-aiplatform.googleapis.com"), Some("google"));
        assert_eq!(provider("myco.openai.azure.com"), Some("azure-openai"));
        assert_eq!(provider("bedrock-runtime.us-east-1.amazonaws.com"), Some("aws-bedrock"));
        assert_eq!(provider("api.x.ai"), Some("xai"));
    }

    #[test]
    fn lookalikes_do_not_match() {
        assert_eq!(provider("evil.example.com"), None);
        assert_eq!(provider("notopenai.com"), None);
        assert_eq!(provider("openai.com.evil.example"), None);
        assert_eq!(provider("api.openai.co"), None);
        assert_eq!(provider("bedrock-runtime.amazonaws.com"), None);
        assert_eq!(provider("fx.ai"), None);
        assert_eq!(provider(""), None);
        assert_eq!(provider("."), None);
    }
}
