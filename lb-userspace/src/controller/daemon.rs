//! The daemon's wiring (as mini-redis's `run`): config file, pinned data
//! plane, owner lock, admin socket, metrics, signals, the eBPF log, the
//! flow counter; then [`Controller::run`].
use super::*;

/// Signals: SIGTERM/SIGINT end `run` (data plane left forwarding),
/// SIGHUP reloads.
pub(super) fn signals(
) -> std::io::Result<(impl std::future::Future<Output = ()>, mpsc::Receiver<()>)> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    let stop = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
        }
    };
    Ok((stop, rx))
}

pub(super) fn attach_mode(m: config::XdpMode) -> AttachMode {
    match m {
        config::XdpMode::Auto => AttachMode::Auto,
        config::XdpMode::Native => AttachMode::Native,
        config::XdpMode::Generic => AttachMode::Generic,
    }
}

/// `xdplb run --config PATH`: the daemon.
/// With `keep_applied`, the config's text is kept there once the
/// controller has taken it (and again after every reload).
pub async fn run(config_path: PathBuf, keep_applied: Option<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(&config_path).map_err(|source| config::ConfigError::Read {
            path: config_path.clone(),
            source,
        })?;
    let config = config::parse(&config_path, &text)?;
    config::check_interfaces_exist(&config).map_err(|e| e.placed(&config_path))?;
    // Before anything is touched: an address we cannot have fails the
    // start (a controller without the metrics it was told to serve is
    // one nobody watches).
    let metrics_listener = match config.control.metrics_listen {
        Some(listen) => Some(crate::web::bind(listen).await?),
        None => None,
    };
    let sync_endpoint = match &config.sync {
        Some(s) => Some(
            crate::flowsync::transport::Endpoint::bind(
                s.listen,
                &s.peers,
                &s.secret,
                crate::status::now_unix_ms(),
            )
            .await
            .with_context(|| {
                format!(
                    "{}: [sync] listen = \"{}\": cannot bind it",
                    config_path.display(),
                    s.listen
                )
            })?,
        ),
        None => None,
    };
    // One owner per pinned data plane, whatever the admin socket: a second
    // controller fails here, before it touches what the first one runs.
    let owner = crate::owner::acquire(
        Path::new(crate::owner::LOCK_DIR),
        &config.dataplane.pin_path,
    )?;
    // Under `ip netns exec` this is the host's bpffs through /proc/1/root.
    let pin_path = dataplane::prepare_pin_path(&config.dataplane.pin_path)?;
    let socket = config.control.admin_socket.clone();
    let listener = crate::admin::bind(&socket).await?;
    let mut dp = Dataplane::load_tuned(
        Shape {
            pin_path: pin_path.clone(),
            ring_size: config.dataplane.ring_size,
            flow_table_size: config.dataplane.flow_table_size,
        },
        dataplane::Tuning {
            max_flow_inserts_per_sec: config.dataplane.max_flow_inserts_per_sec,
            tunnel_source_v4: config.dataplane.tunnel_source_v4,
            tunnel_source_v6: config.dataplane.tunnel_source_v6,
            answers_per_sec: config.dataplane.answers_per_sec,
            flow_seed: config
                .sync
                .as_ref()
                .map(|s| crate::flowsync::tag_seed(&s.secret)),
        },
    )?;
    for iface in &config.dataplane.interfaces {
        dp.attach(iface, attach_mode(config.dataplane.xdp_mode))?;
        info!(iface, pin = %pin_path.display(), "XDP program attached (link pinned)");
        if Dataplane::driver(iface).as_deref() == Some("veth") {
            // The kernel drops frames redirected into a veth whose peer has
            // neither an XDP program nor GRO, without a trace.
            warn!(
                iface,
                "veth: frames redirected out of this interface are dropped unless its peer runs \
                 an XDP program or has GRO on (`ethtool -K PEER gro on`); check `xdplb stats` \
                 against what the backends receive"
            );
        }
    }
    match dp.logger(log::logger()) {
        Ok(logger) => forward_ebpf_logs(logger)?,
        Err(e) => warn!(error = %e, "the XDP program's log messages will not be shown"),
    }
    for iface in dp.prune_links(&config.dataplane.interfaces)? {
        info!(iface, "detached: no longer in the config's interfaces");
    }
    // Before any ring is written: the program must know this host's
    // addresses to tell replies to our own probes from client traffic.
    dp.sync_host(&config.dataplane.interfaces)
        .context("writing this host's addresses and interfaces into the data plane")?;
    dp.sync_extra_macs(&config.dataplane.extra_macs)
        .context("writing extra_macs into the data plane")?;
    let (shutdown, reload_rx) = signals()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Metrics::new(pin_path.clone());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let admin = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            crate::admin::serve_on(listener, cmd_tx, done).await;
        })
    };
    info!(socket = %socket.display(), "admin socket");
    let metrics_task = metrics_listener.map(|listener| {
        let m = metrics.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            crate::web::serve_listener(listener, m, done).await;
        })
    });
    let probes: ProbeFactory = Arc::new(health::probe_for);
    let ring_size = config.dataplane.ring_size;
    let (mut controller, inputs) = Controller::new(config_path, config, dp, probes, Some(metrics))?;
    controller.keep_applied = keep_applied;
    let flow_sync_task = match sync_endpoint {
        Some(endpoint) => {
            let (task, handle) =
                crate::flowsync::task::FlowSync::new(endpoint, &pin_path, ring_size)
                    .context("[sync]: flow sync cannot start")?;
            controller.with_flow_sync(handle);
            Some(tokio::spawn(task.run(stop_rx.clone())))
        }
        None => None,
    };
    controller.save_applied(&text);
    let pin = pin_path.clone();
    let counter: FlowCounter = Arc::new(move || count_flows(&pin));
    // On a worker, not on the thread that blocks on `main`: each probe
    // report then wakes the controller on the worker that ran the probe
    // instead of a second thread (a futex wake and two context switches a
    // report, at a thousand reports a second).
    let result = tokio::spawn(controller.run(inputs, cmd_rx, reload_rx, Some(counter), shutdown))
        .await
        .context("the controller task failed")?;
    let _ = stop_tx.send(true);
    let _ = admin.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(t) = flow_sync_task {
        let _ = t.await;
    }
    drop(owner);
    result?;
    Ok(())
}

/// Drains the XDP program's log ring into our log whenever it has data.
pub(super) fn forward_ebpf_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> std::io::Result<()> {
    use tokio::io::{unix::AsyncFd, Interest};
    // SAFETY: the logger owns its ring-buffer fd: it stays open, and is the
    // one `as_raw_fd` returns, for as long as the logger lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::spawn(async move {
        while let Ok(mut ready) = fd.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    Ok(())
}

pub(super) fn count_flows(pin_path: &Path) -> Option<dataplane::FlowCensus> {
    match dataplane::flow_census(pin_path, FLOW_COUNT_LIMIT, FLOW_IDLE) {
        Ok(c) => Some(c),
        Err(e) => {
            // Not zero: a failed count frees nothing.
            warn!(error = %e, "counting flows failed");
            None
        }
    }
}
