use std::path::Path; pub fn run(_dir: &Path, _quick: bool) -> anyhow::Result<()> { anyhow::bail!("bench: not yet") }
