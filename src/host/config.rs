//! Registers the settings table as the module configs `writebehind.<name>`.
//!
//! Every row of [`crate::settings::TABLE`] becomes a string config (an alias is a second name of the
//! same config), so `CONFIG GET writebehind.*` lists every setting, redis.conf lines and
//! `MODULE LOADEX ... CONFIG` set them, and `CONFIG SET` goes through [`settings::parse`] — a bad value
//! is refused with an error naming the setting and the accepted range, and the server keeps running.
//! Settings that cannot change at run time are registered `IMMUTABLE`, so Redis itself refuses them.
//!
//! The default Redis sees is the process environment's value under the seed's name (then its
//! aliases), falling back to the table default; that is how the sidecar's Kubernetes env list keeps
//! working unchanged.
//!
//! Aliases take one of two forms, chosen from the detected server ([`crate::host::server`]): Redis 8 takes
//! `name|alias` in one registration; Valkey and Redis 7 refuse it, so there every name is a config of
//! its own bound to the same setting (reads and writes through either name see one value, and
//! `CONFIG GET writebehind.*` lists both). While the configs load, a value given in redis.conf or
//! `MODULE LOADEX` under any name wins over the defaults the other names are loaded with.

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use redis_module::{raw, Context};

use crate::host::logging;
use crate::settings::{self, Change, Group, Key, Origin, Spec};

/// The string last handed to Redis by the getter of each key; Redis copies it, the module owns it.
static GOT: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// A config's private data is `name_number * STRIDE + key index`: the key is what the getter and
/// setter need; the name number (0 for the setting's own name) only keeps each registration distinct.
const STRIDE: usize = 1 << 16;

fn key_of(privdata: *mut c_void) -> Option<Key> {
    Key::ALL.get(privdata as usize % STRIDE).copied()
}

/// True while `RedisModule_LoadConfigs` runs with aliases registered as separate configs.
static LOADING_SEPARATE: AtomicBool = AtomicBool::new(false);

/// Per key, during a separate-form load: the default every name was registered with, and whether a
/// name has already been given a value of its own (from redis.conf or `MODULE LOADEX`).
static LOAD_STATE: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());

/// Whether a value handed to the setter may be stored. Outside a separate-form load, always. During
/// one, a value other than the registered default marks the key as explicitly set; a default never
/// overwrites an explicit value, whichever of the key's names Redis happens to load first.
fn accept_while_loading(key: Key, text: &str) -> bool {
    if !LOADING_SEPARATE.load(Ordering::Acquire) {
        return true;
    }
    let mut state = LOAD_STATE.lock();
    let Some((default, explicit)) = state.get_mut(key as usize) else {
        return true;
    };
    if text != default.as_str() {
        *explicit = true;
        true
    } else {
        !*explicit
    }
}

extern "C" fn get_config(
    _name: *const c_char,
    privdata: *mut c_void,
) -> *mut raw::RedisModuleString {
    crate::host::ffi::guard("config get", || {
        let Some(key) = key_of(privdata) else {
            return std::ptr::null_mut();
        };
        let text = settings::render(settings::current().get(key));
        let Some(create) = (unsafe { raw::RedisModule_CreateString }) else {
            return std::ptr::null_mut();
        };
        let fresh = unsafe { create(std::ptr::null_mut(), text.as_ptr().cast(), text.len()) };
        let mut got = GOT.lock();
        if got.len() < Key::ALL.len() {
            got.resize(Key::ALL.len(), 0);
        }
        let old = std::mem::replace(&mut got[key as usize], fresh as usize);
        if old != 0 {
            if let Some(free) = unsafe { raw::RedisModule_FreeString } {
                unsafe { free(std::ptr::null_mut(), old as *mut raw::RedisModuleString) };
            }
        }
        fresh
    })
    .unwrap_or(std::ptr::null_mut())
}

extern "C" fn set_config(
    _name: *const c_char,
    val: *mut raw::RedisModuleString,
    privdata: *mut c_void,
    err: *mut *mut raw::RedisModuleString,
) -> c_int {
    let result = crate::host::ffi::guard("config set", || {
        let key = key_of(privdata).ok_or_else(|| "unknown setting".to_string())?;
        let text = string_of(val);
        let value = settings::parse(key, &text).map_err(|e| e.to_string())?;
        if accept_while_loading(key, &text) {
            settings::store(key, value);
        }
        Ok::<(), String>(())
    })
    .unwrap_or_else(|| Err("internal error while setting the value".into()));
    match result {
        Ok(()) => raw::REDISMODULE_OK as c_int,
        Err(msg) => {
            if let Some(create) = unsafe { raw::RedisModule_CreateString } {
                let e = unsafe { create(std::ptr::null_mut(), msg.as_ptr().cast(), msg.len()) };
                unsafe { *err = e };
            }
            raw::REDISMODULE_ERR as c_int
        }
    }
}

fn string_of(s: *mut raw::RedisModuleString) -> String {
    unsafe { super::ffi::string_bytes(s) }
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// Registers every setting and loads the values from redis.conf / `MODULE LOADEX`.
pub fn register(ctx: &Context) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok();
    let (Some(register_string), Some(load)) =
        (unsafe { raw::RedisModule_RegisterStringConfig }, unsafe {
            raw::RedisModule_LoadConfigs
        })
    else {
        return Err(
            "this Redis has no module configuration API (Redis 7.0 or later is needed)".into(),
        );
    };
    let joined = crate::host::server::current().joined_aliases();
    let mut defaults = Vec::with_capacity(Key::ALL.len());
    for (index, &key) in Key::ALL.iter().enumerate() {
        let spec = key.spec();
        let (initial, origin, invalid) = settings::initial(key, &env);
        if let Some(e) = invalid {
            logging::warning(&format!(
                "environment: {e}; using the default '{}'",
                spec.default
            ));
        }
        if let Ok(v) = settings::parse(key, &initial) {
            settings::store(key, v);
        }
        if spec.group == Group::Ignored && origin != Origin::Default {
            logging::info(&format!(
                "{} is ignored inside Redis (the module runs in the server itself)",
                spec.name
            ));
        }
        let flags = match spec.change {
            Change::Live => raw::REDISMODULE_CONFIG_DEFAULT,
            Change::Restart => raw::REDISMODULE_CONFIG_IMMUTABLE,
        };
        let names = std::iter::once(spec.name).chain(spec.aliases.iter().copied());
        let registrations: Vec<(String, u32)> = if joined {
            // Redis 8: one config, `<name>|<alias>...`, spelled out in full (UNPREFIXED).
            let full: Vec<String> = names
                .map(|n| format!("writebehind.{}", Spec::config_name(n)))
                .collect();
            vec![(full.join("|"), flags | raw::REDISMODULE_CONFIG_UNPREFIXED)]
        } else {
            // Valkey, Redis 7: one config per name; the server adds the `writebehind.` prefix.
            names.map(|n| (Spec::config_name(n), flags)).collect()
        };
        for (number, (name, flags)) in registrations.into_iter().enumerate() {
            register_one(
                register_string,
                ctx,
                &name,
                &initial,
                flags,
                number * STRIDE + index,
            )?;
        }
        defaults.push((initial, false));
    }
    if !joined {
        *LOAD_STATE.lock() = defaults;
        LOADING_SEPARATE.store(true, Ordering::Release);
    }
    let loaded = unsafe { load(ctx.ctx) };
    LOADING_SEPARATE.store(false, Ordering::Release);
    LOAD_STATE.lock().clear();
    if loaded != raw::REDISMODULE_OK as c_int {
        return Err(
            "a writebehind.* value in redis.conf or MODULE LOADEX is invalid (see the line above)"
                .into(),
        );
    }
    Ok(())
}

type RegisterString = unsafe extern "C" fn(
    *mut raw::RedisModuleCtx,
    *const c_char,
    *const c_char,
    u32,
    raw::RedisModuleConfigGetStringFunc,
    raw::RedisModuleConfigSetStringFunc,
    raw::RedisModuleConfigApplyFunc,
    *mut c_void,
) -> c_int;

fn register_one(
    register_string: RegisterString,
    ctx: &Context,
    name: &str,
    default: &str,
    flags: u32,
    privdata: usize,
) -> Result<(), String> {
    let (Ok(cname), Ok(cdefault)) = (CString::new(name), CString::new(default)) else {
        return Err(format!("config {name} has an unusable default"));
    };
    let status = unsafe {
        register_string(
            ctx.ctx,
            cname.as_ptr(),
            cdefault.as_ptr(),
            flags,
            Some(get_config),
            Some(set_config),
            None,
            privdata as *mut c_void,
        )
    };
    if status != raw::REDISMODULE_OK as c_int {
        return Err(format!("could not register the config {name}"));
    }
    Ok(())
}
