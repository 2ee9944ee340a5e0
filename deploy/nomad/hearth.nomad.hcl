# Hearth cluster mode on Nomad (docs/cluster.md): one hearthd per client node, as a system job.
# NOT RUN on the development machine (Nomad is not installable there); written against Nomad 1.7+.
#
# Needs on every client: hearth installed at /opt/hearth (`npm ci && npm run build`), QEMU (or
# Firecracker), iproute2 and nftables, /dev/kvm, and the raw_exec driver enabled
# (plugin "raw_exec" { config { enabled = true } }): hearthd runs as root on the host, because it
# makes network namespaces, tap devices, nftables tables and loop devices.
# PostgreSQL is an external dependency: set its URL and the cluster token in Nomad Variables
# (nomad var put nomad/jobs/hearth database_url=postgres://… cluster_token=$(openssl rand -hex 32)).

job "hearth" {
  type        = "system"
  datacenters = ["*"]

  group "hearthd" {
    network {
      mode = "host"
      port "api" {
        static = 3030
      }
    }

    # A node's sandboxes outlive hearthd (VMs run detached); give it time to let go of them cleanly.
    restart {
      attempts = 10
      interval = "10m"
      delay    = "5s"
      mode     = "delay"
    }

    task "hearthd" {
      driver = "raw_exec"

      config {
        command = "/usr/bin/node"
        args    = ["/opt/hearth/dist/daemon/main.js", "--host", "0.0.0.0", "--port", "${NOMAD_PORT_api}", "--data-dir", "/var/lib/hearth"]
      }

      # VMs must survive a hearthd restart: only hearthd gets the signal, and it exits without stopping them.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      env {
        HEARTH_NODE_ID      = "${node.unique.name}"
        HEARTH_NODE_ADDRESS = "http://${NOMAD_IP_api}:${NOMAD_PORT_api}"
        HEARTH_CACHE_DIR    = "/var/cache/hearth"
        HEARTH_EGRESS_INTERFACE = "eth0"
      }

      template {
        destination = "secrets/cluster.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/hearth" }}
          HEARTH_DATABASE_URL={{ .database_url }}
          HEARTH_CLUSTER_TOKEN={{ .cluster_token }}
          {{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }

      service {
        name     = "hearth"
        port     = "api"
        provider = "nomad"
        check {
          type     = "http"
          path     = "/health"
          interval = "10s"
          timeout  = "2s"
        }
      }
    }
  }
}
