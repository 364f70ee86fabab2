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

use std::ffi::{c_char, c_int, c_void, CString};

use parking_lot::Mutex;
use redis_module::{raw, Context};

use crate::logging;
use crate::settings::{self, Change, Group, Key, Origin, Spec};

/// The string last handed to Redis by the getter of each key; Redis copies it, the module owns it.
static GOT: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn key_of(privdata: *mut c_void) -> Option<Key> {
    Key::ALL.get(privdata as usize).copied()
}

extern "C" fn get_config(
    _name: *const c_char,
    privdata: *mut c_void,
) -> *mut raw::RedisModuleString {
    crate::ffi::guard("config get", || {
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
    let result = crate::ffi::guard("config set", || {
        let key = key_of(privdata).ok_or_else(|| "unknown setting".to_string())?;
        let text = string_of(val);
        let value = settings::parse(key, &text).map_err(|e| e.to_string())?;
        settings::store(key, value);
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
    let Some(ptr_len) = (unsafe { raw::RedisModule_StringPtrLen }) else {
        return String::new();
    };
    let mut len = 0usize;
    let p = unsafe { ptr_len(s, &mut len) };
    if p.is_null() {
        return String::new();
    }
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
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
        // One config per setting; an alias is Redis's own `<name>|<alias>` form, so both names read
        // and write the same value (this needs the names spelled out in full: UNPREFIXED).
        let full = |n: &str| format!("writebehind.{}", Spec::config_name(n));
        let mut names = full(spec.name);
        for alias in spec.aliases {
            names.push('|');
            names.push_str(&full(alias));
        }
        let (Ok(cname), Ok(cdefault)) = (CString::new(names.clone()), CString::new(initial)) else {
            return Err(format!("setting {} has an unusable default", spec.name));
        };
        let status = unsafe {
            register_string(
                ctx.ctx,
                cname.as_ptr(),
                cdefault.as_ptr(),
                flags | raw::REDISMODULE_CONFIG_UNPREFIXED,
                Some(get_config),
                Some(set_config),
                None,
                index as *mut c_void,
            )
        };
        if status != raw::REDISMODULE_OK as c_int {
            return Err(format!("could not register the config {names}"));
        }
    }
    if unsafe { load(ctx.ctx) } != raw::REDISMODULE_OK as c_int {
        return Err(
            "a writebehind.* value in redis.conf or MODULE LOADEX is invalid (see the line above)"
                .into(),
        );
    }
    Ok(())
}
