//! [`main`]: the process around an engine — signals first, then the
//! application's start-up and run, then the exit code.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

use log::info;

use crate::signals::Signals;
use crate::supervisor::Report;

/// The exit code of a start-up failure.
pub const EXIT_STARTUP: u8 = 2;

/// Runs `run` on a fresh actix System, with the shutdown signals installed
/// before anything else (so a SIGTERM during start-up is queued, not fatal).
/// `run` answers the engine's report (0 drained, 1 cut short) or a start-up
/// error, printed on one line as `<program>: <error>` with exit code 2.
/// After the System has stopped it logs the leak check and the exit code.
pub fn main<F, Fut, E>(run: F) -> ExitCode
where
    F: FnOnce(Signals) -> Fut,
    Fut: Future<Output = Result<Report, E>>,
    E: Display,
{
    let program = crate::telemetry::program_name();
    let system = actix_rt::System::new();
    let signals = match system.block_on(async { Signals::install() }) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("{program}: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_STARTUP);
        }
    };
    let ran = system.block_on(run(signals));
    actix_rt::System::current().stop();
    let _ = system.run();
    match ran {
        Ok(mut report) => {
            let code = u8::try_from(report.exit_code).unwrap_or(1);
            if let Some(census) = report.census.take() {
                // Every actor stopped itself and every task ended before the
                // System stopped, or it is counted here.
                info!("leak check: {}", census.alive());
            }
            info!("exited with code {code}");
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::from(EXIT_STARTUP)
        }
    }
}
