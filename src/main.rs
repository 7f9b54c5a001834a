//! `drainer`: see the README, or `drainer --help`.

fn main() -> std::process::ExitCode {
    drainer::startup::run()
}
