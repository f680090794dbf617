//! Local secret stores: environment variables and a JSON file, as Dapr's `secretstores.local.*`.

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::secrets::{SecretMap, SecretStore};
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

// === EnvSecretStore ===

/// Environment variables an env secret store never serves, compared ignoring ASCII case: the
/// runtime API's token (Mecha's, and the names Dapr uses for its own), which a secret read must
/// not be able to reveal.
pub const RESERVED_ENV: &[&str] = &["MECHA_API_TOKEN", "DAPR_API_TOKEN", "APP_API_TOKEN"];

fn is_reserved(var: &str) -> bool {
    RESERVED_ENV.iter().any(|r| r.eq_ignore_ascii_case(var))
}

/// `secretstores.local.env`: secret `K` is the environment variable `<prefix>K`, answered as
/// `{K: value}`.
///
/// Metadata `prefix` (optional), as in Dapr: only variables whose name starts with it are
/// visible, and it is not part of the secret names (`prefix: MYAPP_` → secret `DB` reads
/// `MYAPP_DB`; `bulk_get` returns every `MYAPP_<NAME>` with a non-empty `<NAME>`, as `<NAME>`).
/// Matching is case-sensitive, as Dapr's on Linux and macOS. The embedded default config sets
/// `prefix: MECHA_SECRET_`, so the runtime API cannot read the rest of the sidecar's
/// environment. Without a prefix every variable of the process is a secret and `bulk_get`
/// returns all of them (development only). Whatever the prefix, the variables in
/// [`RESERVED_ENV`] (API tokens) are never served, as Dapr withholds its own tokens.
/// Variables whose name or value is not UTF-8 are skipped by `bulk_get`. Variables are read at
/// call time, so changes to the environment show.
#[derive(Debug)]
pub struct EnvSecretStore {
    /// `secret store "<name>"`: the prefix of every error message.
    label: String,
    prefix: String,
}

impl EnvSecretStore {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            label: format!("secret store {:?}", spec.name),
            prefix: spec.meta_string_or("prefix", ""),
        })
    }
}

#[async_trait]
impl Health for EnvSecretStore {}

#[async_trait]
impl SecretStore for EnvSecretStore {
    async fn get(&self, key: &str, _metadata: &HashMap<String, String>) -> Result<SecretMap> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: secret key is empty",
                self.label
            )));
        }
        let var = format!("{}{key}", self.prefix);
        if is_reserved(&var) {
            return Err(Error::NotFound(format!(
                "{}: secret {key:?} not found (environment variable {var:?} holds an API token \
                 and is never served)",
                self.label
            )));
        }
        match std::env::var(&var) {
            Ok(value) => Ok(HashMap::from([(key.to_owned(), value)])),
            Err(std::env::VarError::NotPresent) => Err(Error::NotFound(format!(
                "{}: secret {key:?} not found (no environment variable {var:?})",
                self.label
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::Internal(format!(
                "{}: secret {key:?}: environment variable {var:?} is not valid UTF-8",
                self.label
            ))),
        }
    }

    async fn bulk_get(
        &self,
        _metadata: &HashMap<String, String>,
    ) -> Result<HashMap<String, SecretMap>> {
        Ok(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(self.prefix.as_str())?;
                (!name.is_empty() && !is_reserved(&k))
                    .then(|| (name.to_owned(), HashMap::from([(name.to_owned(), v)])))
            })
            .collect())
    }
}

// === FileSecretStore ===

/// `secretstores.local.file`: secrets read once, at construction, from a JSON file.
///
/// Metadata, as in Dapr:
/// - `secretsFile` (required): path of a file holding one JSON object.
/// - `nestedSeparator` (default `:`): nested objects and arrays are flattened into names joined
///   with it: `{"db": {"password": "x"}, "hosts": ["a"]}` → `db:password` = `x`, `hosts:0` = `a`.
///   Numbers and booleans become their JSON text, `null` the empty string.
/// - `multiValued` (default false): when true, each top-level name is one secret; a top-level
///   object maps to all its (flattened) children: `{"db": {"user": "u", "password": "x"}}` →
///   secret `db` = `{user: u, password: x}`.
///
/// A missing, unreadable or malformed file fails construction with an error starting with
/// `metadata.secretsFile:` that names the path.
#[derive(Debug)]
pub struct FileSecretStore {
    label: String,
    path: String,
    secrets: HashMap<String, SecretMap>,
}

impl FileSecretStore {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        let path = spec.meta_required("secretsFile")?.to_owned();
        let separator = match spec.meta_str("nestedSeparator") {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => ":".to_owned(),
        };
        let multi_valued = spec.meta_bool("multiValued", false)?;
        let bad =
            |what: String| Error::InvalidArgument(format!("metadata.secretsFile: {path:?} {what}"));

        let text =
            std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
        let Value::Object(top) = json else {
            return Err(bad(format!(
                "must hold a JSON object, found {}",
                kind_of(&json)
            )));
        };

        let mut secrets = HashMap::new();
        if multi_valued {
            for (name, value) in top {
                let mut map = SecretMap::new();
                match value {
                    Value::Object(_) | Value::Array(_) => {
                        flatten(&mut map, None, &value, &separator).map_err(|k| {
                            bad(format!(
                                "has key {k:?} twice under {name:?} after flattening"
                            ))
                        })?;
                    }
                    primitive => {
                        map.insert(name.clone(), scalar(&primitive));
                    }
                }
                secrets.insert(name, map);
            }
        } else {
            let mut flat = SecretMap::new();
            flatten(&mut flat, None, &Value::Object(top), &separator).map_err(|k| {
                bad(format!(
                    "has key {k:?} twice after flattening with {separator:?}"
                ))
            })?;
            for (name, value) in flat {
                secrets.insert(name.clone(), HashMap::from([(name, value)]));
            }
        }
        Ok(Self {
            label: format!("secret store {:?}", spec.name),
            path,
            secrets,
        })
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Flattens `value` under `path` into `out`; `Err(name)` when two paths flatten to one name
/// (e.g. `{"a:b": 1, "a": {"b": 2}}`), which would otherwise lose a secret silently.
fn flatten(
    out: &mut SecretMap,
    path: Option<&str>,
    value: &Value,
    separator: &str,
) -> std::result::Result<(), String> {
    let join = |child: &str| match path {
        Some(p) => format!("{p}{separator}{child}"),
        None => child.to_owned(),
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(out, Some(&join(k)), v, separator)?;
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(out, Some(&join(&i.to_string())), v, separator)?;
            }
        }
        primitive => {
            let name = path.unwrap_or_default().to_owned();
            if out.insert(name.clone(), scalar(primitive)).is_some() {
                return Err(name);
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Health for FileSecretStore {}

#[async_trait]
impl SecretStore for FileSecretStore {
    async fn get(&self, key: &str, _metadata: &HashMap<String, String>) -> Result<SecretMap> {
        self.secrets.get(key).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "{}: secret {key:?} not found in {:?}",
                self.label, self.path
            ))
        })
    }

    async fn bulk_get(
        &self,
        _metadata: &HashMap<String, String>,
    ) -> Result<HashMap<String, SecretMap>> {
        Ok(self.secrets.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::PathBuf;

    use super::*;

    /// A file under the system temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, content: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("mecha-secrets-{}-{name}.json", std::process::id()));
            std::fs::write(&path, content).unwrap();
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file_store(path: &str, extra: &[(&str, &str)]) -> Result<FileSecretStore> {
        let mut spec =
            ComponentSpec::new("files", "secretstores.local.file").with("secretsFile", path);
        for (k, v) in extra {
            spec = spec.with(k, v);
        }
        FileSecretStore::new(&spec, &BuildContext::default())
    }

    const NESTED: &str = r#"{"plain": "p", "db": {"password": "x", "user": "u", "port": 5432}, "hosts": ["a", "b"], "on": true, "none": null}"#;

    fn one(k: &str, v: &str) -> SecretMap {
        HashMap::from([(k.to_owned(), v.to_owned())])
    }

    #[tokio::test]
    async fn nested_objects_flatten_like_dapr() {
        let f = TempFile::new("nested", NESTED);
        let s = file_store(f.path(), &[]).unwrap();
        let m = HashMap::new();
        assert_eq!(s.get("plain", &m).await.unwrap(), one("plain", "p"));
        assert_eq!(
            s.get("db:password", &m).await.unwrap(),
            one("db:password", "x")
        );
        assert_eq!(s.get("db:port", &m).await.unwrap(), one("db:port", "5432"));
        assert_eq!(s.get("hosts:1", &m).await.unwrap(), one("hosts:1", "b"));
        assert_eq!(s.get("on", &m).await.unwrap(), one("on", "true"));
        assert_eq!(s.get("none", &m).await.unwrap(), one("none", ""));
        let all = s.bulk_get(&m).await.unwrap();
        assert_eq!(all.len(), 8, "{all:?}");
        let err = s.get("db", &m).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert!(err.to_string().contains("\"db\"") && err.to_string().contains("\"files\""));
    }

    #[tokio::test]
    async fn custom_separator() {
        let f = TempFile::new("sep", NESTED);
        let s = file_store(f.path(), &[("nestedSeparator", ".")]).unwrap();
        assert_eq!(
            s.get("db.user", &HashMap::new()).await.unwrap(),
            one("db.user", "u")
        );
    }

    #[tokio::test]
    async fn multi_valued_maps_a_top_level_object_to_its_children() {
        let f = TempFile::new("multi", NESTED);
        let s = file_store(f.path(), &[("multiValued", "true")]).unwrap();
        let m = HashMap::new();
        let db = s.get("db", &m).await.unwrap();
        assert_eq!(
            db,
            HashMap::from([
                ("password".to_owned(), "x".to_owned()),
                ("user".to_owned(), "u".to_owned()),
                ("port".to_owned(), "5432".to_owned()),
            ])
        );
        assert_eq!(s.get("plain", &m).await.unwrap(), one("plain", "p"));
        assert_eq!(
            s.get("hosts", &m)
                .await
                .unwrap()
                .get("0")
                .map(String::as_str),
            Some("a")
        );
        assert_eq!(s.bulk_get(&m).await.unwrap().len(), 5);
    }

    #[test]
    fn bad_files_fail_with_the_path_and_reason() {
        let missing = std::env::temp_dir().join("mecha-no-such-secrets-file.json");
        let missing = missing.to_str().unwrap();
        let err = file_store(missing, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("metadata.secretsFile:") && err.contains(missing),
            "{err}"
        );
        assert!(err.contains("cannot be read"), "{err}");

        let f = TempFile::new("invalid", "{not json");
        let err = file_store(f.path(), &[]).unwrap_err().to_string();
        assert!(
            err.starts_with("metadata.secretsFile:") && err.contains("not valid JSON"),
            "{err}"
        );

        let f = TempFile::new("array", "[1]");
        let err = file_store(f.path(), &[]).unwrap_err().to_string();
        assert!(
            err.contains("must hold a JSON object, found an array"),
            "{err}"
        );

        let f = TempFile::new("dup", r#"{"a:b": "1", "a": {"b": "2"}}"#);
        let err = file_store(f.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("\"a:b\" twice"), "{err}");

        let err = FileSecretStore::new(
            &ComponentSpec::new("files", "secretstores.local.file"),
            &BuildContext::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("metadata.secretsFile: is required"),
            "{err}"
        );

        let f = TempFile::new("flag", "{}");
        let err = file_store(f.path(), &[("multiValued", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("metadata.multiValued:"), "{err}");
    }

    fn env_store(prefix: Option<&str>) -> EnvSecretStore {
        let mut spec = ComponentSpec::new("env", "secretstores.local.env");
        if let Some(p) = prefix {
            spec = spec.with("prefix", p);
        }
        EnvSecretStore::new(&spec, &BuildContext::default()).unwrap()
    }

    #[tokio::test]
    async fn env_reads_variables_by_name() {
        std::env::set_var("MECHA_TEST_ENV_PLAIN", "v1");
        let s = env_store(None);
        let m = HashMap::new();
        assert_eq!(
            s.get("MECHA_TEST_ENV_PLAIN", &m).await.unwrap(),
            one("MECHA_TEST_ENV_PLAIN", "v1")
        );
        let err = s.get("MECHA_TEST_ENV_ABSENT", &m).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert!(
            err.to_string().contains("\"env\"")
                && err.to_string().contains("MECHA_TEST_ENV_ABSENT")
        );
        assert!(s.get("", &m).await.is_err());
        // No prefix: every variable is visible.
        let all = s.bulk_get(&m).await.unwrap();
        assert_eq!(
            all.get("MECHA_TEST_ENV_PLAIN"),
            Some(&one("MECHA_TEST_ENV_PLAIN", "v1"))
        );
    }

    #[tokio::test]
    async fn env_prefix_limits_and_is_stripped() {
        std::env::set_var("MECHA_TEST_PFX_DB", "secret");
        std::env::set_var("MECHA_TEST_OTHER", "hidden");
        let s = env_store(Some("MECHA_TEST_PFX_"));
        let m = HashMap::new();
        assert_eq!(s.get("DB", &m).await.unwrap(), one("DB", "secret"));
        assert!(s.get("MECHA_TEST_OTHER", &m).await.is_err());
        let all = s.bulk_get(&m).await.unwrap();
        assert_eq!(all, HashMap::from([("DB".to_owned(), one("DB", "secret"))]));
        // Case-sensitive, as on Linux in Dapr: the lower-case spelling is another variable.
        std::env::set_var("mecha_test_pfx_LOWER", "other");
        assert!(s.get("LOWER", &m).await.is_err());
        // The prefix alone names no secret.
        std::env::set_var("MECHA_TEST_PFX_", "bare");
        assert!(s.get("", &m).await.is_err());
        assert!(!s.bulk_get(&m).await.unwrap().contains_key(""));
    }

    #[tokio::test]
    async fn env_keys_that_cannot_name_a_variable_are_not_found() {
        let s = env_store(Some("MECHA_TEST_ODD_"));
        let m = HashMap::new();
        for key in ["A=B", "A\0B", "=", "\0"] {
            let err = s.get(key, &m).await.unwrap_err();
            assert!(matches!(err, Error::NotFound(_)), "{key:?}: {err:?}");
        }
    }

    #[tokio::test]
    async fn api_tokens_are_never_served() {
        std::env::set_var("MECHA_API_TOKEN", "tok");
        std::env::set_var("MECHA_TEST_TOK_APP_API_TOKEN", "tok2");
        let m = HashMap::new();
        let s = env_store(None);
        for key in ["MECHA_API_TOKEN", "mecha_api_token"] {
            let err = s.get(key, &m).await.unwrap_err();
            assert!(matches!(err, Error::NotFound(_)), "{err:?}");
            assert!(!err.to_string().contains("tok\""), "{err}");
        }
        assert!(!s
            .bulk_get(&m)
            .await
            .unwrap()
            .contains_key("MECHA_API_TOKEN"));
        // With a prefix the reserved name is the whole variable name, so a prefixed variable
        // that merely ends like one is an ordinary secret.
        let s = env_store(Some("MECHA_TEST_TOK_"));
        assert_eq!(
            s.get("APP_API_TOKEN", &m).await.unwrap(),
            one("APP_API_TOKEN", "tok2")
        );
    }
}
