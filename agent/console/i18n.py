"""The console's words in English and Bahasa Indonesia, and the numeric alarm codes.

Every message the console, ``siaga ctl`` or their help text shows goes through :func:`t`, and
each entry has both languages (``tests/console/test_i18n.py`` checks that). Alarm *codes* are
the same in both languages and never change: a technician on the phone can read "alarm 104"
whatever language the screen is in. New alarms get new numbers; a number is never re-used.
"""

from __future__ import annotations

LANGS = ("en", "id")

# Stable numeric alarm codes: append only, never renumber (docs/console.md lists them).
ALARM_CODES: dict[str, int] = {
    "fail_to_start": 101,
    "fail_to_stop": 102,
    "gen_failed_while_running": 103,
    "e_stop": 104,
    "low_fuel": 105,
    "gen_not_in_auto": 106,
    "mains_chatter": 107,
    "max_run_exceeded": 108,
    "service_due": 109,
    "mains_sensor_disagrees": 110,
    "not_in_auto": 111,
    "mains_failed_not_in_auto": 112,
    "ups_link_lost": 201,
    "ups_on_battery": 202,
    "ups_low_battery": 203,
    "ups_runtime_below_margin": 204,
    "ups_fault": 205,
    "ups_battery_replace": 206,
    "clock_unsynced": 301,
    "watchdog_reset": 302,
    "storage_failed": 303,
    "broker_unreachable": 401,
    "central_service_unreachable": 402,  # retired name, kept so 402 is never re-used
    "coordinator_unreachable": 403,
    "service_unreachable": 404,
    "nut_clients_refused": 501,
    "nut_password_guessing": 502,
}
ALARM_BY_CODE = {v: k for k, v in ALARM_CODES.items()}

ALARM_TEXT_ID: dict[str, str] = {
    "fail_to_start": "Genset tidak hidup setelah semua percobaan start (terkunci)",
    "fail_to_stop": "Genset masih jalan fail_to_stop_s setelah diperintah berhenti",
    "gen_failed_while_running": "Genset mati sendiri saat berjalan (terkunci)",
    "e_stop": "Tombol darurat ditekan (terkunci sampai dilepas dan di-ack)",
    "low_fuel": "Saklar bahan bakar rendah aktif",
    "gen_not_in_auto": "Kontroler genset tidak di auto/remote: sinyal start diabaikan",
    "ups_link_lost": "UPS tidak menjawab",
    "ups_on_battery": "UPS memikul beban dari baterai",
    "ups_low_battery": "UPS melaporkan baterai lemah",
    "ups_runtime_below_margin": "Sisa waktu UPS di bawah batas: server sedang dimatikan",
    "ups_fault": "UPS melaporkan kerusakan",
    "ups_battery_replace": "UPS minta baterai diganti",
    "mains_sensor_disagrees": "Sensor PLN dan UPS tidak sepakat soal PLN",
    "mains_chatter": "Terlalu sering start dalam satu jam: PLN naik-turun",
    "service_due": "Jadwal servis genset tercapai",
    "max_run_exceeded": "Genset sudah jalan lebih lama dari max_run_alarm_s",
    "clock_unsynced": "Jam sistem belum sinkron: latihan terjadwal ditunda",
    "watchdog_reset": "Pi di-reset oleh watchdog perangkat keras",
    "broker_unreachable": "Broker MQTT tak terjangkau (kejadian disimpan di outbox)",
    "central_service_unreachable": "Koordinator pusat offline",
    "storage_failed": "Kartu SD tidak bisa ditulis: kontrol jalan terus, jurnal di memori",
    "not_in_auto": "Kontroler ini tidak di AUTO (MANUAL atau OFF): PLN padam tidak akan menyalakan genset",
    "mains_failed_not_in_auto": "PLN padam saat kontroler tidak di AUTO: tidak ada yang menyalakan genset",
    "coordinator_unreachable": "Koordinator pusat menyatakan dirinya offline",
    "service_unreachable": "Layanan yang dipantau (services: di konfigurasi) tidak menjawab",
    "nut_clients_refused": "Server NUT menolak sambungan (slot penuh, atau terlalu banyak dari satu host)",
    "nut_password_guessing": "Sandi NUT salah berulang dari satu host: host itu dikunci sementara",
}

# key: (English, Bahasa Indonesia). Placeholders are str.format fields.
MESSAGES: dict[str, tuple[str, str]] = {
    # --- outcomes and parse errors --------------------------------------------------------
    "ok": ("OK", "OK"),
    "refused": ("REFUSED", "DITOLAK"),
    "unknown_at": ("% Unknown command at '{line}'", "% Perintah tidak dikenal di '{line}'"),
    "ambiguous_at": ("% Ambiguous command at '{line}': {choices}", "% Perintah ambigu di '{line}': {choices}"),
    "incomplete": ("% Incomplete command: {choices}", "% Perintah belum lengkap: {choices}"),
    "bad_value_at": ("% Bad value at '{line}'", "% Nilai salah di '{line}'"),
    "extra_at": ("% Too many words at '{line}'", "% Kata berlebih di '{line}'"),
    "missing": ("% Missing {param}", "% Kurang {param}"),
    "bad_option_at": ("% Unknown option at '{line}'", "% Opsi tidak dikenal di '{line}'"),
    "usage": ("usage: {usage}", "pemakaian: {usage}"),
    "empty": ("empty command; try `help`", "perintah kosong; coba `help`"),
    "need_enable": ("% Needs privileged mode: type `enable` and the PIN first",
                    "% Perlu mode istimewa: ketik `enable` lalu PIN dulu"),
    "need_sim": ("% sim commands need hardware: simulated", "% perintah sim butuh hardware: simulated"),
    "core_timeout": ("the controller did not answer within {s:g} s; nothing is known to have changed",
                     "kontroler tidak menjawab dalam {s:g} detik; tidak diketahui ada perubahan"),
    "failed": ("% The command failed: {error}", "% Perintah gagal: {error}"),
    "line_too_long": ("% Line too long ({n} characters, at most {max}): ignored",
                      "% Baris terlalu panjang ({n} karakter, paling banyak {max}): diabaikan"),
    "noise": ("% {n} non-text byte(s) ignored (line noise, or wrong baud rate?)",
              "% {n} byte bukan teks diabaikan (gangguan jalur, atau baud rate salah?)"),
    "banner": ("Siaga {version} technician console, site {site}. `?` lists commands.",
               "Konsol teknisi Siaga {version}, lokasi {site}. `?` daftar perintah."),
    "bye": ("Session ended.", "Sesi selesai."),
    "idle_drop": ("% Idle for {min:g} minutes: privileged mode ended",
                  "% Diam {min:g} menit: mode istimewa berakhir"),
    "out_dropped": ("% The terminal stopped reading: {n} bytes of output dropped",
                    "% Terminal berhenti membaca: {n} byte keluaran dibuang"),
    # --- access ---------------------------------------------------------------------------
    "pin_prompt": ("PIN: ", "PIN: "),
    "enable_ok": ("privileged mode: commands that change state are allowed (`disable` ends it)",
                  "mode istimewa: perintah yang mengubah keadaan diizinkan (`disable` mengakhiri)"),
    "enable_wrong": ("wrong PIN ({left} more before enable is locked)",
                     "PIN salah ({left} kali lagi sebelum enable dikunci)"),
    "enable_wrong_locked": ("wrong PIN: enable is locked for {s} s",
                            "PIN salah: enable dikunci {s} detik"),
    "enable_locked": ("enable is locked for {s} s more after wrong PINs",
                      "enable masih dikunci {s} detik lagi karena PIN salah"),
    "enable_no_pin": ("no PIN is configured (console.enable_pin_hash): privileged mode is off on this console",
                      "PIN belum diatur (console.enable_pin_hash): mode istimewa tidak tersedia di konsol ini"),
    "enable_already": ("already in privileged mode", "sudah dalam mode istimewa"),
    "enable_ctl": ("siaga ctl is privileged already (the socket's permissions guard it)",
                   "siaga ctl sudah istimewa (dijaga izin berkas socket)"),
    "disabled": ("privileged mode ended", "mode istimewa berakhir"),
    "lang_set": ("language: English", "bahasa: Indonesia"),
    "color_set": ("colour {v}", "warna {v}"),
    # --- command replies ------------------------------------------------------------------
    "no_ups": ("no UPS is configured (ups.enabled is false)", "tidak ada UPS (ups.enabled false)"),
    "ups_frame": ("raw last frame from the UPS, {s} s ago:", "bingkai mentah terakhir dari UPS, {s} detik lalu:"),
    "ups_no_frame": ("no frame from the UPS yet", "belum ada bingkai dari UPS"),
    "no_shutdown": ("the shutdown sequence is not running", "urutan shutdown tidak berjalan"),
    "no_nut": ("the NUT server is not running", "server NUT tidak berjalan"),
    "no_mqtt": ("MQTT is off (mqtt.enabled is false)", "MQTT mati (mqtt.enabled false)"),
    "no_config": ("the config file is not known to this agent", "berkas konfigurasi tidak diketahui agen ini"),
    "no_log": ("no log kept", "tidak ada log"),
    "shutdown_return_confirm": (
        "ups shutdown-return cuts the power to everything on the UPS after shutdown.ups_off_delay_s: "
        "repeat with --yes if the servers are down",
        "ups shutdown-return memutus listrik semua beban UPS setelah shutdown.ups_off_delay_s: "
        "ulangi dengan --yes bila server sudah mati"),
    "gen_start_hint": ("{msg} (`mode manual` first, then `gen start`)", "{msg} (`mode manual` dulu, lalu `gen start`)"),
    "no_alarms": ("no alarms", "tidak ada alarm"),
    "nut_none": ("no NUT clients connected", "tidak ada klien NUT tersambung"),
    "cfg_staged": ("staged {key} = {value} ({n} change(s) staged; `config commit` writes them)",
                   "disiapkan {key} = {value} ({n} perubahan; `config commit` menulisnya)"),
    "cfg_bad": ("{key}: {reason}", "{key}: {reason}"),
    "cfg_nothing": ("nothing staged", "tidak ada perubahan yang disiapkan"),
    "cfg_reverted": ("dropped {n} staged change(s)", "{n} perubahan dibatalkan"),
    "cfg_applied": ("written to {path} (backup {backup}); applied", "ditulis ke {path} (cadangan {backup}); berlaku"),
    "cfg_restart": ("written to {path} (backup {backup}); restart needed: {keys} (systemctl restart siaga-agent)",
                    "ditulis ke {path} (cadangan {backup}); perlu restart: {keys} (systemctl restart siaga-agent)"),
    "cfg_changed_on_disk": ("{path} changed on disk since it was loaded: `config revert` and stage again",
                            "{path} berubah di disk sejak dimuat: `config revert` lalu siapkan lagi"),
    "cfg_write_failed": ("cannot write {path}: {error}; the file is unchanged",
                         "tidak bisa menulis {path}: {error}; berkas tidak berubah"),
    "cfg_staged_head": ("staged, not yet committed:", "disiapkan, belum ditulis:"),
}

# Help text per command (the key is the command's words joined by spaces).
HELP: dict[str, tuple[str, str]] = {
    "help": ("help [COMMAND]: what a command does and its words; `?` lists what may come next",
             "help [PERINTAH]: penjelasan perintah; `?` daftar kata berikutnya"),
    "status": ("one screen: mains, generator, UPS, alarms, MQTT, NUT clients, clock, uptime",
               "satu layar: PLN, genset, UPS, alarm, MQTT, klien NUT, jam, lama hidup"),
    "events": ("last N journal events with their times (default 20)", "N kejadian terakhir di jurnal dengan waktunya (bawaan 20)"),
    "journal": ("the same as events", "sama dengan events"),
    "alarms": ("alarms with their codes; * = not acknowledged", "alarm dengan kodenya; * = belum di-ack"),
    "show": ("show status|events|alarms|ups|mqtt|nut|config|log|version", "tampilkan status|events|alarms|ups|mqtt|nut|config|log|version"),
    "ack": ("acknowledge one alarm (name or code) or all", "akui (ack) satu alarm (nama atau kode) atau semua"),
    "gen": ("gen start | gen stop: run or stop the generator (MANUAL mode)", "gen start | gen stop: jalankan atau hentikan genset (mode MANUAL)"),
    "gen start": ("run the generator (MANUAL mode; e-stop and lockouts still win)",
                  "jalankan genset (mode MANUAL; tombol darurat dan penguncian tetap menang)"),
    "gen stop": ("stop the generator after its cool-down (MANUAL mode)", "hentikan genset setelah pendinginan (mode MANUAL)"),
    "start": ("the same as gen start", "sama dengan gen start"),
    "stop": ("the same as gen stop", "sama dengan gen stop"),
    "mode": ("mode auto|manual|off: AUTO starts on a mains failure by itself",
             "mode auto|manual|off: AUTO start sendiri saat PLN padam"),
    "test": ("test run for MINUTES (default from the config), mains present, AUTO mode; add on-load to transfer",
             "uji jalan MENIT (bawaan dari konfigurasi), PLN ada, mode AUTO; tambah on-load untuk memindah beban"),
    "test stop": ("end a test run", "akhiri uji jalan"),
    "service-done": ("restart the service interval after a generator service", "mulai ulang interval servis setelah genset diservis"),
    "ups": ("the UPS reading, link state and raw last frame", "bacaan UPS, keadaan sambungan dan bingkai mentah terakhir"),
    "ups status": ("the same as ups", "sama dengan ups"),
    "ups test": ("UPS battery test: quick, deep, SECONDS or stop (refused on battery)",
                 "uji baterai UPS: quick, deep, DETIK atau stop (ditolak saat di baterai)"),
    "ups beeper": ("toggle the UPS beeper (Megatec)", "nyalakan/matikan bunyi UPS (Megatec)"),
    "ups shutdown-return": ("the UPS cuts its output after shutdown.ups_off_delay_s, back with mains (needs --yes)",
                            "UPS memutus keluaran setelah shutdown.ups_off_delay_s, hidup lagi saat PLN kembali (perlu --yes)"),
    "ups cancel-shutdown": ("cancel a UPS shutdown in progress", "batalkan shutdown UPS yang sedang berjalan"),
    "mqtt": ("the link to the central broker and the outbox depth", "sambungan ke broker pusat dan isi outbox"),
    "nut": ("NUT clients (the servers' upsmon) connected now", "klien NUT (upsmon server) yang tersambung"),
    "shutdown": ("the servers' shutdown sequence: status, dry-run, test", "urutan shutdown server: status, dry-run, test"),
    "shutdown status": ("phase of the shutdown sequence, NUT clients logged in", "fase urutan shutdown, klien NUT yang login"),
    "shutdown dry-run": ("what an FSD now would do, step by step (changes nothing)", "apa yang dilakukan FSD sekarang, langkah demi langkah (tanpa mengubah)"),
    "shutdown test": ("FSD toward one NUT user only (default shutdown.test_client)", "FSD ke satu pengguna NUT saja (bawaan shutdown.test_client)"),
    "shutdown test stop": ("end the shutdown test", "akhiri uji shutdown"),
    "shutdown clear-fsd": ("clear an FSD a NUT primary client set", "hapus FSD yang dipasang klien NUT primary"),
    "config": ("config show [SECTION] | set KEY VALUE | commit | revert", "config show [BAGIAN] | set KUNCI NILAI | commit | revert"),
    "config show": ("the site config (or one section) as it runs, and what is staged", "konfigurasi lokasi (atau satu bagian) yang berlaku, dan yang disiapkan"),
    "config set": ("stage KEY (dotted, e.g. generator.timers.warm_up_s) = VALUE, checked by the config rules",
                   "siapkan KUNCI (bertitik, mis. generator.timers.warm_up_s) = NILAI, diperiksa aturan konfigurasi"),
    "config commit": ("write the staged changes to the file (atomic, with a .bak backup)",
                      "tulis perubahan ke berkas (atomik, dengan cadangan .bak)"),
    "config revert": ("drop the staged changes", "batalkan perubahan yang disiapkan"),
    "log": ("last N lines of the agent's log (default 20)", "N baris terakhir log agen (bawaan 20)"),
    "version": ("the agent's version, site and hardware", "versi agen, lokasi dan perangkat keras"),
    "lang": ("lang en|id: the language of this session", "lang en|id: bahasa sesi ini"),
    "color": ("color on|off: ANSI colours (off for dumb terminals)", "color on|off: warna ANSI (off untuk terminal sederhana)"),
    "enable": ("enter privileged mode with the PIN (needed to change anything)", "masuk mode istimewa dengan PIN (perlu untuk mengubah apa pun)"),
    "disable": ("leave privileged mode", "keluar dari mode istimewa"),
    "exit": ("end the session", "akhiri sesi"),
    "sim": ("simulator (hardware: simulated): mains, gen, estop, fuel, status", "simulator (hardware: simulated): mains, gen, estop, fuel, status"),
    "sim status": ("the simulated plant", "keadaan simulasi"),
    "sim mains": ("sim mains on|off: the simulated utility supply", "sim mains on|off: listrik PLN simulasi"),
    "sim gen": ("sim gen fail|refuel|fails-to-start|starts-normally", "sim gen fail|refuel|fails-to-start|starts-normally"),
    "sim estop": ("sim estop on|off: press or release the emergency stop", "sim estop on|off: tekan atau lepas tombol darurat"),
    "sim fuel": ("sim fuel PCT: set the tank level", "sim fuel PERSEN: isi tangki"),
    "sim flood": ("sim flood N: N journal records at once (load test)", "sim flood N: N catatan jurnal sekaligus (uji beban)"),
    "sim stall-core": ("sim stall-core SECONDS: block the core loop (watchdog test)", "sim stall-core DETIK: hentikan loop inti (uji watchdog)"),
}

PARAM_NAMES: dict[str, tuple[str, str]] = {
    "N": ("N", "N"), "SECONDS": ("SECONDS", "DETIK"), "MINUTES": ("MINUTES", "MENIT"), "ALARM": ("ALARM", "ALARM"),
    "SECTION": ("SECTION", "BAGIAN"), "KEY": ("KEY", "KUNCI"), "VALUE": ("VALUE", "NILAI"),
    "COMMAND": ("COMMAND", "PERINTAH"), "CLIENT": ("CLIENT", "KLIEN"), "SECONDS": ("SECONDS", "DETIK"),
    "PCT": ("PCT", "PERSEN"),
}


# The controller's own replies (agent/control/amf.py says them in English), in Bahasa Indonesia.
# Matched whole; the first that matches wins; an unknown reply is shown as the controller said it.
CONTROLLER_ID: tuple[tuple[str, str], ...] = (
    (r"acknowledged (\d+) alarm\(s\); e_stop not reset: release it first",
     r"\1 alarm di-ack; e_stop belum di-reset: lepaskan dulu tombolnya"),
    (r"acknowledged (\d+) alarm\(s\)", r"\1 alarm di-ack"),
    (r"release the e-stop first: it can only be reset once released",
     "lepaskan tombol darurat dulu: hanya bisa di-reset setelah dilepas"),
    (r"unknown alarm (.*)", r"alarm \1 tidak dikenal"),
    (r"service interval restarted", "interval servis dimulai ulang"),
    (r"mode (\w+); start cancelled", r"mode \1; start dibatalkan"),
    (r"mode MANUAL; the start under way goes on \(`stop` ends it\)",
     "mode MANUAL; start yang berjalan diteruskan (`gen stop` menghentikannya)"),
    (r"mode (\w+); the generator keeps carrying the load until mains returns",
     r"mode \1; genset tetap memikul beban sampai PLN kembali"),
    (r"mode (\w+)", r"mode \1"),
    (r"start is only for MANUAL mode \(use test_start in AUTO\)(.*)",
     r"start hanya untuk mode MANUAL (di AUTO pakai test)\1"),
    (r"test_start needs AUTO mode", "uji jalan butuh mode AUTO"),
    (r"mains is not present: the generator starts by itself if needed",
     "PLN tidak ada: genset akan start sendiri bila perlu"),
    (r"stop is only for MANUAL mode", "stop hanya untuk mode MANUAL"),
    (r"nothing to stop \(state (\w+), run reason (\w+)\)", r"tidak ada yang dihentikan (keadaan \1, alasan jalan \2)"),
    (r"stopping after cool-down", "berhenti setelah pendinginan"),
    (r"start cancelled", "start dibatalkan"),
    (r"locked out: acknowledge the alarms first", "terkunci: ack alarmnya dulu"),
    (r"low fuel", "bahan bakar rendah"),
    (r"busy \((\w+)\)", r"sibuk (\1)"),
    (r"start limit per hour reached", "batas start per jam tercapai"),
    (r"(\w+) run starting", r"genset start (\1)"),
)


def controller_text(lang: str, message: str) -> str:
    """A controller reply in ``lang``."""
    if lang != "id":
        return message
    import re

    for pattern, repl in CONTROLLER_ID:
        if re.fullmatch(pattern, message):
            return re.sub(pattern, repl, message)
    return message


def t(lang: str, key: str, /, **kw: object) -> str:
    """The message ``key`` in ``lang`` (English when ``lang`` is unknown), formatted."""
    en, id_ = MESSAGES[key]
    text = id_ if lang == "id" else en
    return text.format(**kw) if kw else text


def help_text(lang: str, key: str) -> str:
    pair = HELP.get(key)
    if pair is None:
        return ""
    return pair[1] if lang == "id" else pair[0]


def param_name(lang: str, name: str) -> str:
    pair = PARAM_NAMES.get(name, (name, name))
    return pair[1] if lang == "id" else pair[0]


def alarm_text(lang: str, name: str, english: str) -> str:
    return ALARM_TEXT_ID.get(name, english) if lang == "id" else english


def alarm_code(name: str) -> int | None:
    return ALARM_CODES.get(name)
