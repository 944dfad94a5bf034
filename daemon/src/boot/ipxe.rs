//! The iPXE scripts, as pure functions of the node and the configuration. Every value that
//! lands in a script is validated upstream (MACs, hostnames, kernel arguments, URLs built from
//! IP addresses), so nothing here can inject an iPXE command.

use crate::config::LocalBoot;

/// What the script for one MAC does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Script {
    /// PXE-boot Flatcar's live image with the node's install Ignition.
    Install {
        hostname: String,
        mac: String,
        kernel_url: String,
        initrd_url: String,
        initrd_name: String,
        kernel_args: Vec<String>,
    },
    /// Boot from the local disk.
    Local { hostname: String, note: String },
    /// Not registered: say so, wait, ask again.
    Unknown {
        mac: String,
        retry_secs: u32,
        again_url: String,
    },
}

/// `GET /boot.ipxe`: chains to the per-MAC script.
pub fn generic(base_url: &str) -> String {
    format!(
        "#!ipxe\n\
         # lacave: fetch this machine's own script\n\
         :start\n\
         chain --autofree {base_url}/ipxe/${{mac:hexhyp}}?arch=${{buildarch}}&platform=${{platform}} || goto retry\n\
         :retry\n\
         echo lacave: cannot fetch the script for ${{mac}} from {base_url}; retrying in 10 s\n\
         sleep 10\n\
         goto start\n"
    )
}

pub fn render(script: &Script, local_boot: LocalBoot) -> String {
    match script {
        Script::Install {
            hostname,
            mac,
            kernel_url,
            initrd_url,
            initrd_name,
            kernel_args,
        } => format!(
            "#!ipxe\n\
             echo lacave: installing Flatcar on {hostname} ({mac})\n\
             kernel {kernel_url} {args}\n\
             initrd --name {initrd_name} {initrd_url}\n\
             boot\n",
            args = kernel_args.join(" ")
        ),
        Script::Local { hostname, note } => {
            // UEFI firmware moves on to its next boot entry after `exit 1`; a plain `exit`
            // left OVMF silent for minutes (PXE-LAB.md).
            let bios = match local_boot {
                LocalBoot::Exit => "exit\n",
                LocalBoot::Sanboot => "sanboot --no-describe --drive 0x80 || exit\n",
            };
            format!(
                "#!ipxe\n\
                 echo lacave: {hostname} {note}: booting from the local disk\n\
                 iseq ${{platform}} efi && exit 1 ||\n\
                 {bios}"
            )
        }
        Script::Unknown {
            mac,
            retry_secs,
            again_url,
        } => format!(
            "#!ipxe\n\
             echo lacave: this machine ({mac}) is not registered; nothing will be installed.\n\
             echo lacave: register it with: lacave node add --mac {mac} --hostname NAME --ip ADDRESS --role worker\n\
             echo lacave: asking again in {retry_secs} s\n\
             sleep {retry_secs}\n\
             chain --autofree {again_url}\n"
        ),
    }
}
