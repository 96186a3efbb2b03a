#!/bin/sh
# /init of the test guest. Loads the modules listed in /etc/modules, then watches for virtio-blk
# disks. For each disk that appears it reports the disk's serial and size, writes one line to
# its first and to its last sector (fsync'ed), and reports that; for each disk that goes away
# it reports the removal. Every report is one console line starting with "EBSEMU-GUEST".
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run/disks

say() {
    echo "EBSEMU-GUEST $*"
}

stamp() {  # DISK SECTOR SERIAL: the line the test looks for in the volume's bytes
    printf 'ebsemu guest wrote %s at sector %s\n' "$3" "$2" \
        | timeout 30 dd of="/dev/$1" bs=512 seek="$2" conv=notrunc,fsync 2>/dev/null
}

added() {
    serial=""
    read -r serial < "/sys/block/$1/serial"
    read -r sectors < "/sys/block/$1/size"
    echo "$serial" > "/run/disks/$1"
    say "DISK-ADDED $1 serial=$serial sectors=$sectors"
    last=$((sectors - 1))
    if stamp "$1" 0 "$serial" && stamp "$1" "$last" "$serial"; then
        say "DISK-WRITTEN $1 serial=$serial sectors=0,$last"
    else
        say "DISK-WRITE-FAILED $1 serial=$serial"
    fi
}

removed() {
    read -r serial < "/run/disks/$1"
    rm -f "/run/disks/$1"
    say "DISK-REMOVED $1 serial=$serial"
}

while read -r module; do
    insmod "/lib/modules/$module.ko" || say "ERROR insmod $module failed"
done < /etc/modules
say "READY kernel=$(uname -r)"

while :; do
    for dir in /sys/block/vd*; do
        name=${dir##*/}
        if [ -b "/dev/$name" ] && [ ! -e "/run/disks/$name" ]; then
            added "$name"
        fi
    done
    for seen in /run/disks/*; do
        name=${seen##*/}
        if [ -e "$seen" ] && [ ! -e "/sys/block/$name" ]; then
            removed "$name"
        fi
    done
    sleep 0.1
done
