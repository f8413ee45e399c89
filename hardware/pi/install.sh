#!/usr/bin/env bash
# Install HoloDiff on a Raspberry Pi OS (bookworm or later) analyzer image. Run as root from the
# source tree: bash hardware/pi/install.sh
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
apt-get update
# picamera2 and libcamera come from the OS, not from a Python package index
apt-get install -y python3-picamera2 python3-lgpio python3-venv
id holodiff >/dev/null 2>&1 || useradd --system --home /var/lib/holodiff --groups video,render,input,gpio,dialout holodiff
install -d -o holodiff -g holodiff -m 0750 /var/lib/holodiff
install -d /opt/holodiff /etc/holodiff
cp -r "$src/hardware" /opt/holodiff/
# the venv sees the OS's picamera2/libcamera
python3 -m venv --system-site-packages /opt/holodiff/venv
/opt/holodiff/venv/bin/pip install "$src[pi]"
install -m 0644 "$src/hardware/pi/holodiff.env" /etc/holodiff/holodiff.env
install -m 0644 "$src/hardware/pi/99-holodiff.rules" /etc/udev/rules.d/99-holodiff.rules
install -m 0644 "$src/hardware/pi/holodiff-ui.service" /etc/systemd/system/
install -m 0644 "$src/hardware/pi/holodiff-serial.service" /etc/systemd/system/
grep -q "^dtoverlay=dwc2" /boot/firmware/config.txt || cat "$src/hardware/pi/config.txt.append" >> /boot/firmware/config.txt
grep -q "g_serial" /etc/modules || echo g_serial >> /etc/modules
udevadm control --reload
systemctl daemon-reload
systemctl enable holodiff-ui.service holodiff-serial.service
echo "installed; reboot, then check: sudo -u holodiff HOLODIFF_HOME=/var/lib/holodiff /opt/holodiff/venv/bin/holodiff run --hardware --sample-id CHECK --operator service"
